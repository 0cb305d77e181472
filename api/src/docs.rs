//! Routes and their OpenAPI document, built by the same calls: a route
//! cannot be served without being documented, nor documented without being
//! served.

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodFilter, on};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};
use sojourn_persistence::Store;

use crate::auth::{AuthMode, Scope, require};
use crate::error::ErrorBody;
use crate::state::AppState;

type SchemaFn = fn(&mut SchemaGenerator) -> Schema;
/// A path parameter's schema, as JSON.
type ParamSchemaFn = fn() -> Value;

/// A path parameter's schema, by name.
type ParamSchema = (&'static str, ParamSchemaFn);

fn schema_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

fn inline_schema_of<T: JsonSchema>(_: &mut SchemaGenerator) -> Schema {
    SchemaSettings::openapi3()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
}

/// One operation's documentation.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    summary: &'static str,
    tag: &'static str,
    scope: Option<Scope>,
    body: Option<SchemaFn>,
    query: Option<SchemaFn>,
    response: Option<(u16, SchemaFn)>,
    /// Other answers than the success and the error format: `(status,
    /// description, schema)`.
    also: Vec<(u16, &'static str, SchemaFn)>,
    /// Path parameters whose schema is not a plain string.
    params: Vec<ParamSchema>,
    /// Guarded by the cluster secret instead of an API key.
    cluster_only: bool,
    /// The body may be left out.
    body_optional: bool,
    description: Option<&'static str>,
}

impl Spec {
    pub(crate) fn new(tag: &'static str, summary: &'static str) -> Spec {
        Spec {
            summary,
            tag,
            scope: None,
            body: None,
            query: None,
            response: None,
            also: Vec::new(),
            params: Vec::new(),
            cluster_only: false,
            body_optional: false,
            description: None,
        }
    }

    /// Another answer the route gives (besides its success and the error
    /// format), with its own body.
    pub(crate) fn also<T: JsonSchema>(mut self, status: u16, description: &'static str) -> Spec {
        self.also.push((status, description, schema_of::<T>));
        self
    }

    /// A path parameter's schema when it is not any string.
    pub(crate) fn param(mut self, name: &'static str, schema: ParamSchemaFn) -> Spec {
        self.params.push((name, schema));
        self
    }

    /// Only nodes of the cluster call it (with the cluster secret).
    pub(crate) fn cluster_only(mut self) -> Spec {
        self.cluster_only = true;
        self
    }

    pub(crate) fn scope(mut self, scope: Scope) -> Spec {
        self.scope = Some(scope);
        self
    }

    pub(crate) fn body<T: JsonSchema>(mut self) -> Spec {
        self.body = Some(schema_of::<T>);
        self
    }

    /// A body the request may leave out.
    pub(crate) fn optional_body<T: JsonSchema>(mut self) -> Spec {
        self.body = Some(schema_of::<T>);
        self.body_optional = true;
        self
    }

    pub(crate) fn query<T: JsonSchema>(mut self) -> Spec {
        self.query = Some(inline_schema_of::<T>);
        self
    }

    pub(crate) fn returns<T: JsonSchema>(mut self, status: u16) -> Spec {
        self.response = Some((status, schema_of::<T>));
        self
    }

    pub(crate) fn describe(mut self, text: &'static str) -> Spec {
        self.description = Some(text);
        self
    }
}

/// The router under construction, with its document.
pub(crate) struct Routes<S: Store> {
    state: AppState<S>,
    router: Router<AppState<S>>,
    generator: SchemaGenerator,
    paths: Map<String, Value>,
    /// Whether requests need a key (`serve`) or may come without one
    /// (`dev`): the document says which.
    auth: AuthMode,
    /// `(method, path)` of every route, in order (for tests and listings).
    pub(crate) table: Vec<(Method, &'static str)>,
}

impl<S: Store> Routes<S> {
    pub(crate) fn new(state: AppState<S>) -> Routes<S> {
        Routes {
            auth: state.auth,
            router: Router::new(),
            generator: SchemaSettings::openapi3().into_generator(),
            paths: Map::new(),
            table: Vec::new(),
            state,
        }
    }

    /// Adds a route: served by `handler`, documented by `spec`, guarded by
    /// the spec's scope (none: public).
    pub(crate) fn add<H, T>(&mut self, method: Method, path: &'static str, spec: Spec, handler: H)
    where
        H: Handler<T, AppState<S>>,
        T: 'static,
    {
        let filter = match method {
            Method::GET => MethodFilter::GET,
            Method::POST => MethodFilter::POST,
            Method::PUT => MethodFilter::PUT,
            Method::DELETE => MethodFilter::DELETE,
            Method::PATCH => MethodFilter::PATCH,
            _ => MethodFilter::GET,
        };
        let mut route = on(filter, handler);
        if let Some(scope) = spec.scope {
            route = route.route_layer(from_fn_with_state(
                (self.state.clone(), scope),
                require::<S>,
            ));
        }
        self.router = std::mem::take(&mut self.router).route(path, route);
        let op = self.operation(path, &spec);
        // OpenAPI templates have no wildcards: `{*path}` is `{path}`.
        let item = self
            .paths
            .entry(path.replace("{*", "{"))
            .or_insert_with(|| json!({}));
        if let Some(obj) = item.as_object_mut() {
            obj.insert(method.as_str().to_ascii_lowercase(), op);
        }
        self.table.push((method, path));
    }

    fn operation(&mut self, path: &str, spec: &Spec) -> Value {
        let mut params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                let name = name.trim_start_matches('*');
                let schema = spec
                    .params
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or_else(|| json!({"type": "string", "minLength": 1}), |(_, s)| s());
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": schema
                })
            })
            .collect();
        if let Some(q) = spec.query {
            let schema = q(&mut self.generator).to_value();
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, prop) in props {
                    let mut prop = prop.clone();
                    let description = prop
                        .as_object_mut()
                        .and_then(|o| o.remove("description"))
                        .unwrap_or(Value::Null);
                    let mut p = json!({
                        "name": name,
                        "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": prop,
                    });
                    if !description.is_null() {
                        p["description"] = description;
                    }
                    params.push(p);
                }
            }
        }
        let mut op = json!({
            "summary": spec.summary,
            "tags": [spec.tag],
            "operationId": operation_id(path, spec.summary),
            "parameters": params,
        });
        if let Some(d) = spec.description {
            op["description"] = json!(d);
        }
        if let Some(body) = spec.body {
            op["requestBody"] = json!({
                "required": !spec.body_optional,
                "content": {"application/json": {"schema": body(&mut self.generator).to_value()}}
            });
        }
        let error = self.generator.subschema_for::<ErrorBody>().to_value();
        let mut responses = Map::new();
        match spec.response {
            Some((status, schema)) => {
                responses.insert(
                    status.to_string(),
                    json!({
                        "description": "success",
                        "content": {"application/json": {"schema": schema(&mut self.generator).to_value()}}
                    }),
                );
            }
            None => {
                responses.insert("200".into(), json!({"description": "success"}));
            }
        }
        for (status, description, schema) in &spec.also {
            responses.insert(
                status.to_string(),
                json!({
                    "description": description,
                    "content": {"application/json": {"schema": schema(&mut self.generator).to_value()}}
                }),
            );
        }
        responses.insert(
            "default".into(),
            json!({
                "description": "an error: {\"error\": {\"code\", \"message\", \"field\"}}",
                "content": {"application/json": {"schema": error}}
            }),
        );
        op["responses"] = Value::Object(responses);
        match spec.scope {
            Some(scope) => {
                op["security"] = match self.auth {
                    AuthMode::Required => json!([{"apiKey": []}]),
                    // Dev mode: without a key a request acts as an admin
                    // of the default namespace; a key, if sent, is checked.
                    AuthMode::Optional => json!([{}, {"apiKey": []}]),
                };
                op["x-required-scope"] = json!(scope.as_str());
            }
            None if spec.cluster_only => op["security"] = json!([{"clusterSecret": []}]),
            None => op["security"] = json!([]),
        }
        op
    }

    /// The router (without state) and the OpenAPI document.
    pub(crate) fn finish(mut self) -> (Router<AppState<S>>, Value) {
        let mut schemas = Value::Object(self.generator.take_definitions(true));
        let mut paths = Value::Object(self.paths);
        if let Value::Object(named) = &mut schemas {
            named.values_mut().for_each(|s| no_boolean_schemas(s, true));
        }
        no_boolean_schemas(&mut paths, false);
        let doc = json!({
            "openapi": "3.0.3",
            "info": {
                "title": "Sojourn API",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Durable, actor-based execution of long-running journeys. Strings and object keys in requests must not contain U+0000 (PostgreSQL cannot store it): such a request is refused with a 400 naming the field."
            },
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key (`sojourn keys create`)."},
                    "clusterSecret": {"type": "apiKey", "in": "header", "name": sojourn_actors::SECRET_HEADER, "description": "The cluster's shared secret (nodes only)."}
                }
            }
        });
        (self.router, doc)
    }
}

/// OpenAPI 3.0 has no boolean schemas (`true`, `false`), which schemars
/// writes for "anything" (`serde_json::Value`) and "nothing": they become
/// `{}` and `{"not": {}}`. `at_schema`: whether `v` itself is a schema.
fn no_boolean_schemas(v: &mut Value, at_schema: bool) {
    match v {
        Value::Bool(b) if at_schema => {
            *v = if *b { json!({}) } else { json!({"not": {}}) };
        }
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                let child_is_schema = match k.as_str() {
                    // Members whose value is one schema.
                    "items" | "not" | "schema" | "additionalItems" | "contains"
                    | "propertyNames" => true,
                    // Members whose value is a map or list of schemas.
                    "properties" | "patternProperties" | "allOf" | "anyOf" | "oneOf" => {
                        match child {
                            Value::Object(m) => {
                                m.values_mut().for_each(|s| no_boolean_schemas(s, true));
                            }
                            Value::Array(a) => {
                                a.iter_mut().for_each(|s| no_boolean_schemas(s, true));
                            }
                            _ => {}
                        }
                        continue;
                    }
                    // `additionalProperties: true/false` is valid 3.0.
                    "additionalProperties" => child.is_object(),
                    _ => false,
                };
                no_boolean_schemas(child, child_is_schema);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| no_boolean_schemas(i, false)),
        _ => {}
    }
}

fn operation_id(path: &str, summary: &str) -> String {
    let _ = path;
    summary
        .split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            let w: String = w.chars().filter(char::is_ascii_alphanumeric).collect();
            if i == 0 {
                w.to_ascii_lowercase()
            } else {
                let mut c = w.chars();
                match c.next() {
                    Some(f) => {
                        f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase()
                    }
                    None => String::new(),
                }
            }
        })
        .collect()
}

/// A JSON object of any shape (a workflow document, an input).
pub(crate) fn json_object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object"})
}

/// An optional JSON object.
pub(crate) fn optional_json_object(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({"type": "object", "nullable": true})
}

/// An optional IANA time zone name, listed (the server knows exactly these).
pub(crate) fn optional_time_zone(_: &mut SchemaGenerator) -> Schema {
    let mut names: Vec<Value> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| Value::from(tz.name()))
        .collect();
    // OpenAPI 3.0: a nullable enum lists null among its values.
    names.push(Value::Null);
    schemars::json_schema!({"type": "string", "nullable": true, "enum": names})
}
