//! # sojourn-api
//!
//! The HTTP API (axum): workflows, executions, events, trigger instances,
//! API keys, health, Prometheus metrics and a generated OpenAPI document.
//!
//! - One error format everywhere: `{"error": {"code", "message", "field"}}`
//!   ([`error::ApiError`]); every client mistake is a 4xx naming the field.
//! - Every route is added through one builder (`docs::Routes`) that serves
//!   it, guards it with its scope and documents it, so `/openapi.json`
//!   matches the real routes by construction.
//! - Auth: API keys (stored hashed) with scopes `read` ⊂ `write` ⊂
//!   `admin`, each in one namespace; a key never sees another namespace.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sojourn_actors::metrics::HttpLabels;
use sojourn_persistence::Store;
use tracing::Instrument;

pub mod auth;
mod console;
mod docs;
pub mod error;
pub mod extract;
mod routes;
mod state;

pub use auth::{AuthMode, Caller, Scope};
pub use error::ApiError;
pub use routes::keys::{KeyOut, create_key};
pub use state::AppState;

use crate::auth::Scope::{Admin, Read, Write};
use crate::docs::{Routes, Spec};
use crate::routes::{
    analytics, audience, cluster, deliveries, events, executions, keys, registry, system, triggers,
    workflows,
};

/// The built API: its router, its OpenAPI document and its route table.
#[derive(Debug)]
pub struct Api {
    pub router: Router,
    pub openapi: Value,
    /// `(method, path)` of every route, as registered.
    pub routes: Vec<(Method, String)>,
}

/// Builds the API over a running engine.
pub fn build<S: Store>(state: AppState<S>) -> Api {
    let doc: Arc<OnceLock<Value>> = Arc::default();
    let mut r = Routes::new(state.clone());
    use Method as M;

    // ---- system ------------------------------------------------------------
    r.add(
        M::GET,
        "/healthz",
        Spec::new("system", "Liveness").returns::<system::Health>(200),
        system::healthz::<S>,
    );
    r.add(
        M::GET,
        "/readyz",
        Spec::new(
            "system",
            "Readiness (database reachable, not shutting down)",
        )
        .returns::<system::Health>(200)
        .also::<system::Health>(503, "not ready: which check failed"),
        system::readyz::<S>,
    );
    r.add(
        M::GET,
        "/metrics",
        Spec::new("system", "Prometheus metrics")
            .scope(Read)
            .describe("Text exposition format 0.0.4."),
        system::metrics::<S>,
    );
    let served = doc.clone();
    r.add(
        M::GET,
        "/openapi.json",
        Spec::new("system", "This OpenAPI document").scope(Read),
        move || {
            let served = served.clone();
            async move { axum::Json(served.get().cloned().unwrap_or(Value::Null)) }
        },
    );

    // ---- workflows ---------------------------------------------------------
    r.add(
        M::POST,
        "/v1/workflows",
        Spec::new("workflows", "Create a workflow")
            .scope(Write)
            .body::<workflows::CreateWorkflow>()
            .returns::<workflows::WorkflowOut>(201),
        workflows::create::<S>,
    );
    r.add(
        M::GET,
        "/v1/workflows",
        Spec::new("workflows", "List workflows")
            .scope(Read)
            .query::<workflows::ListWorkflows>()
            .returns::<routes::Page<workflows::WorkflowOut>>(200),
        workflows::list::<S>,
    );
    r.add(
        M::GET,
        "/v1/workflows/{workflow}",
        Spec::new("workflows", "Get a workflow by key or id")
            .scope(Read)
            .returns::<workflows::WorkflowOut>(200),
        workflows::get::<S>,
    );
    r.add(
        M::PUT,
        "/v1/workflows/{workflow}",
        Spec::new("workflows", "Update a workflow's draft")
            .scope(Write)
            .body::<workflows::UpdateWorkflow>()
            .returns::<workflows::WorkflowOut>(200),
        workflows::update::<S>,
    );
    r.add(
        M::POST,
        "/v1/workflows/{workflow}/validate",
        Spec::new("workflows", "Validate the draft or a given document")
            .scope(Read)
            .optional_body::<workflows::ValidateRequest>()
            .returns::<workflows::ValidationOut>(200)
            .describe("Returns every validation problem, each naming its node and field."),
        workflows::validate::<S>,
    );
    r.add(
        M::GET,
        "/v1/analytics/executions",
        Spec::new("analytics", "Executions by status")
            .scope(Read)
            .query::<executions::CountsQuery>()
            .returns::<executions::CountsOut>(200)
            .describe("Every unfinished execution of the namespace by status (pending, running, waiting, paused), and those that completed, failed or were cancelled since `since`: the console's dashboard."),
        executions::counts::<S>,
    );
    r.add(
        M::GET,
        "/v1/schema/workflow",
        Spec::new("workflows", "The JSON Schema of a workflow document")
            .scope(Read)
            .returns::<serde_json::Value>(200)
            .describe("Draft 2020-12, as `sojourn schema` prints it: what editors and the console's builder generate their forms from (each node type's `config` is a `$defs` entry)."),
        workflows::schema::<S>,
    );
    r.add(
        M::POST,
        "/v1/workflows/{workflow}/simulate",
        Spec::new("workflows", "Preview the draft or a given document")
            .scope(Read)
            .body::<workflows::SimulateRequest>()
            .returns::<workflows::SimulationOut>(200)
            .describe("Runs the journey on a virtual clock, with scripted events and action outcomes, and sends nothing: what happened at each node and when, and every message with its rendered content. An invalid document is a 422 naming every problem, as on publish."),
        workflows::simulate::<S>,
    );
    r.add(M::POST, "/v1/workflows/{workflow}/publish", Spec::new("workflows", "Publish the draft as a new immutable version").scope(Write).returns::<workflows::VersionOut>(201).describe("201 with a new version; 200 with the latest when the draft equals it; 422 with every problem when the draft is invalid."), workflows::publish::<S>);
    r.add(
        M::GET,
        "/v1/workflows/{workflow}/versions",
        Spec::new("workflows", "List published versions")
            .scope(Read)
            .returns::<Vec<workflows::VersionItem>>(200),
        workflows::versions::<S>,
    );
    r.add(
        M::GET,
        "/v1/workflows/{workflow}/versions/{version}",
        Spec::new("workflows", "Get a published version")
            .scope(Read)
            .param("version", || {
                serde_json::json!({"type": "integer", "format": "int32", "minimum": -2147483648i64, "maximum": 2147483647})
            })
            .returns::<workflows::VersionOut>(200),
        workflows::version::<S>,
    );
    r.add(
        M::POST,
        "/v1/workflows/{workflow}/archive",
        Spec::new("workflows", "Archive a workflow")
            .scope(Write)
            .returns::<workflows::WorkflowOut>(200)
            .describe("An archived workflow starts no new executions; running ones carry on."),
        workflows::archive::<S>,
    );
    r.add(
        M::POST,
        "/v1/workflows/{workflow}/triggers",
        Spec::new("triggers", "Create a trigger instance")
            .scope(Write)
            .body::<triggers::CreateTrigger>()
            .returns::<triggers::TriggerOut>(201),
        triggers::create::<S>,
    );

    // ---- registry ----------------------------------------------------------
    r.add(
        M::GET,
        "/v1/registry",
        Spec::new("registry", "List trigger and action definitions")
            .scope(Read)
            .query::<registry::ListDefinitions>()
            .returns::<Vec<registry::DefinitionOut>>(200)
            .describe("The built-in definitions, then the namespace's own at their latest versions: what the builder's palette and property forms are made from."),
        registry::list::<S>,
    );
    r.add(
        M::GET,
        "/v1/registry/{name}",
        Spec::new("registry", "Get a definition (with its versions)")
            .scope(Read)
            .param("name", registry::name_param)
            .query::<registry::GetDefinition>()
            .returns::<registry::DefinitionOut>(200),
        registry::get::<S>,
    );
    r.add(
        M::PUT,
        "/v1/registry/{name}",
        Spec::new("registry", "Create or edit a definition")
            .scope(Write)
            .param("name", registry::name_param)
            .body::<sojourn_runtime::Definition>()
            .returns::<registry::DefinitionOut>(200)
            .also::<registry::DefinitionOut>(201, "created (version 1)")
            .describe("An edit makes a new version (an unchanged definition makes none: `new` is false). Published workflow versions keep running with the version they were validated against; new versions are validated against the latest. A custom action needs `run`: `{\"http\": {method, url, headers, body}}` (templates over `inputs`, `{{ secrets.NAME }}` resolved at send time) or `{\"kafka\": {topic, key}}`."),
        registry::put::<S>,
    );
    r.add(
        M::DELETE,
        "/v1/registry/{name}",
        Spec::new("registry", "Delete a definition")
            .scope(Write)
            .param("name", registry::name_param)
            .returns::<registry::Deleted>(200)
            .describe("New workflow versions can no longer use it; published versions that use it keep running with the version they pinned."),
        registry::delete::<S>,
    );
    r.add(
        M::POST,
        "/v1/registry/{name}/enable",
        Spec::new("registry", "Enable a definition")
            .scope(Write)
            .param("name", registry::name_param)
            .returns::<registry::DefinitionOut>(200),
        registry::enable::<S>,
    );
    r.add(
        M::POST,
        "/v1/registry/{name}/disable",
        Spec::new("registry", "Disable a definition")
            .scope(Write)
            .param("name", registry::name_param)
            .returns::<registry::DefinitionOut>(200)
            .describe("New workflow versions that use it are refused, naming the node; an execution that reaches it pauses (with the reason) until it is enabled again and the execution retried. Built-in definitions can be disabled too."),
        registry::disable::<S>,
    );

    // ---- analytics ---------------------------------------------------------
    r.add(
        M::GET,
        "/v1/analytics/workflows/{workflow}/funnel",
        Spec::new("analytics", "A workflow's funnel")
            .scope(Read)
            .query::<analytics::FunnelQuery>()
            .returns::<analytics::Funnel>(200)
            .describe("Over a range of UTC days (at most 366): executions that entered, how they ended (completed by outcome, failed, cancelled, exited by event), and per node the entries, the branches taken, failed tries, skipped messages, and the unfinished executions there now. Counted by the rollup job from the journal, 10 to 20 s behind. Endings are counted per event; exits by criterion are among the completed."),
        analytics::funnel::<S>,
    );
    r.add(
        M::GET,
        "/v1/analytics/workflows/{workflow}/series",
        Spec::new("analytics", "A daily series of one metric")
            .scope(Read)
            .query::<analytics::SeriesQuery>()
            .returns::<analytics::Series>(200)
            .describe("One value per day of the range in `timezone` (rolled up by UTC hour: a zone whose offset is not whole hours is approximated to the hour), zeros included."),
        analytics::series::<S>,
    );
    r.add(
        M::GET,
        "/v1/analytics/workflows/{workflow}/export",
        Spec::new("analytics", "The rolled-up counts as CSV")
            .scope(Read)
            .query::<analytics::FunnelQuery>()
            .describe("`text/csv`: day, hour (UTC), workflow_id, version, node, branch, channel, provider, metric, value; streamed a day at a time."),
        analytics::export::<S>,
    );

    r.add(
        M::GET,
        "/v1/analytics/workflows/{workflow}/conversions",
        Spec::new("analytics", "A workflow's conversions, against its holdout and per branch")
            .scope(Read)
            .query::<analytics::FunnelQuery>()
            .returns::<analytics::Conversions>(200)
            .describe("Over a range of UTC days: entrants who walked the journey and those held out (`settings.holdout`), how many of each reached the goal (`settings.goal`: its event, sent with the subject as key, within the window after entry), the rates with 95 % Wilson intervals and the lift; per branch taken, the executions that took it and those of them that converted. Entries count on the day of entry, conversions on the day of the event."),
        analytics::conversions::<S>,
    );
    r.add(
        M::GET,
        "/v1/retention",
        Spec::new(
            "analytics",
            "How long the namespace keeps finished executions' records",
        )
        .scope(Read)
        .returns::<analytics::Retention>(200),
        analytics::get_retention::<S>,
    );
    r.add(
        M::PUT,
        "/v1/retention",
        Spec::new("analytics", "Set how long the namespace keeps finished executions' records")
            .scope(Admin)
            .body::<analytics::Retention>()
            .returns::<analytics::Retention>(200)
            .describe("In days, per kind of record (null: for good): the journal, node executions and the delivery log of executions finished that long ago are deleted by the sweeper, in small batches, once the analytics have counted them. Executions themselves and the analytics are kept."),
        analytics::put_retention::<S>,
    );
    r.add(
        M::GET,
        "/v1/analytics/deliveries",
        Spec::new("analytics", "Delivery rates per channel and provider")
            .scope(Read)
            .query::<analytics::NamespaceQuery>()
            .returns::<analytics::DeliveryRates>(200)
            .describe("Over a range of UTC days (at most 366), of the namespace or one workflow: messages sent, delivered, opened, clicked, bounced, complained, undelivered, failed to send and not sent on purpose (by reason), with the rates, per channel and per channel and provider. A delivery counts on the day its status moved (a message opened counts as sent and delivered too). Rolled up from the delivery log, 10 to 20 s behind."),
        analytics::deliveries::<S>,
    );
    r.add(
        M::GET,
        "/v1/analytics/failing-nodes",
        Spec::new("analytics", "The nodes that failed most")
            .scope(Read)
            .query::<analytics::FailingQuery>()
            .returns::<analytics::FailingNodes>(200)
            .describe("Over a range of UTC days, of the namespace or one workflow, at most `limit` nodes (20): executions failed there first, then failed tries of its action, failed sends, and bounced or undelivered messages."),
        analytics::failing_nodes::<S>,
    );

    // ---- executions --------------------------------------------------------
    r.add(M::POST, "/v1/executions", Spec::new("executions", "Start an execution").scope(Write).query::<executions::WaitQuery>().body::<executions::StartExecution>().returns::<executions::Started>(201).also::<executions::StartAnswer>(200, "without `wait`: the execution this Idempotency-Key started before (`Started`); with `wait`: the execution finished, its state (as `GET /v1/executions/{execution}`)").also::<executions::ExecutionOut>(202, "with `wait`: the execution had not finished when the wait ran out; its state then").describe("Honours the Idempotency-Key header: the same key returns the same execution (200) instead of starting another. 409 when the subject has the workflow's maximum entries. With `wait` (at most 60s) it answers when the execution finishes, 200 with its state, or when the wait runs out, 202 with its state then; a start under a used Idempotency-Key waits for that execution the same way."), executions::start::<S>);
    r.add(
        M::GET,
        "/v1/executions",
        Spec::new("executions", "List executions")
            .scope(Read)
            .query::<executions::ListExecutions>()
            .returns::<routes::Page<executions::ExecutionItem>>(200),
        executions::list::<S>,
    );
    r.add(
        M::GET,
        "/v1/executions/{execution}",
        Spec::new("executions", "Get an execution")
            .scope(Read)
            .query::<executions::WaitQuery>()
            .returns::<executions::ExecutionOut>(200)
            .also::<executions::ExecutionOut>(
                202,
                "with `wait`: the execution had not finished when the wait ran out; its state then",
            )
            .describe("With `wait` (at most 60s) it answers when the execution has finished (200) or when the wait runs out (202), with its state then."),
        executions::get::<S>,
    );
    r.add(
        M::GET,
        "/v1/executions/{execution}/journal",
        Spec::new("executions", "Read an execution's journal")
            .scope(Read)
            .query::<executions::JournalQuery>()
            .returns::<executions::JournalPage>(200),
        executions::journal::<S>,
    );
    r.add(
        M::GET,
        "/v1/executions/{execution}/nodes",
        Spec::new("executions", "List an execution's node executions")
            .scope(Read)
            .returns::<Vec<executions::NodeExecutionOut>>(200),
        executions::nodes::<S>,
    );
    r.add(
        M::POST,
        "/v1/executions/{execution}/events",
        Spec::new("executions", "Send an event to one execution")
            .scope(Write)
            .body::<executions::DirectEvent>()
            .returns::<executions::Accepted>(202),
        executions::event::<S>,
    );
    r.add(
        M::POST,
        "/v1/executions/{execution}/pause",
        Spec::new("executions", "Pause an execution")
            .scope(Write)
            .body::<executions::Reason>()
            .returns::<executions::Accepted>(202),
        executions::pause::<S>,
    );
    r.add(
        M::POST,
        "/v1/executions/{execution}/resume",
        Spec::new("executions", "Resume a paused execution")
            .scope(Write)
            .returns::<executions::Accepted>(202),
        executions::resume::<S>,
    );
    r.add(
        M::POST,
        "/v1/executions/{execution}/cancel",
        Spec::new("executions", "Cancel an execution")
            .scope(Write)
            .body::<executions::Reason>()
            .returns::<executions::Accepted>(202),
        executions::cancel::<S>,
    );
    r.add(
        M::POST,
        "/v1/executions/{execution}/retry",
        Spec::new(
            "executions",
            "Retry a paused or failed execution from the node that failed",
        )
        .scope(Write)
        .returns::<executions::Accepted>(202),
        executions::retry::<S>,
    );

    // ---- events ------------------------------------------------------------
    r.add(M::POST, "/v1/events", Spec::new("events", "Send an event by name and correlation key").scope(Write).body::<events::SendEvent>().returns::<events::EventDelivered>(202).describe("Delivered to every execution waiting for it with that key and to journeys' exit criteria, sleeping executions included."), events::send::<S>);

    // ---- triggers ----------------------------------------------------------
    r.add(
        M::GET,
        "/v1/triggers",
        Spec::new("triggers", "List trigger instances")
            .scope(Read)
            .query::<triggers::ListTriggers>()
            .returns::<Vec<triggers::TriggerOut>>(200),
        triggers::list::<S>,
    );
    r.add(
        M::GET,
        "/v1/triggers/{trigger}",
        Spec::new("triggers", "Get a trigger instance")
            .scope(Read)
            .returns::<triggers::TriggerOut>(200),
        triggers::get::<S>,
    );
    // ---- deliveries --------------------------------------------------------
    r.add(
        M::GET,
        "/v1/deliveries",
        Spec::new("deliveries", "List deliveries (the delivery log)")
            .scope(Read)
            .query::<deliveries::ListDeliveries>()
            .returns::<routes::Page<deliveries::DeliveryOut>>(200)
            .describe("One row per send attempt of a channel message to one provider (an attempt that failed over to another provider has one row per provider tried), newest first. Recipients are masked."),
        deliveries::list::<S>,
    );
    r.add(
        M::POST,
        "/v1/webhooks/{provider}",
        Spec::new("deliveries", "A provider's status report (its status webhook)")
            .returns::<deliveries::ReportOut>(200)
            .describe("Where a provider posts delivery events: SendGrid's signed event webhook, Mailgun's webhooks, Twilio's status callback. No API key: the provider's signature is checked against its configured key (webhook_public_key, webhook_signing_key, the auth token); 401 for a bad or stale signature, 409 for a report received before. Moves each delivery the provider names to its new status (never back down)."),
        deliveries::report::<S>,
    );
    r.add(
        M::GET,
        "/v1/providers",
        Spec::new("deliveries", "The providers this node sends through")
            .scope(Read)
            .returns::<Vec<deliveries::ProviderOut>>(200)
            .describe("Each configured provider's name, kind and channels, and the channels that use it by default; never its credentials."),
        deliveries::providers::<S>,
    );
    r.add(
        M::GET,
        "/v1/triggers/{trigger}/dead-letters",
        Spec::new("triggers", "An event trigger's dead letters")
            .scope(Read)
            .query::<triggers::ListDeadLetters>()
            .returns::<Vec<triggers::DeadLetterOut>>(200)
            .describe("Messages the trigger could not use (a value that is not JSON, an expression that fails on it, a start refused for good), newest first, with the reason. Their partition moved on."),
        triggers::dead_letters::<S>,
    );
    r.add(
        M::GET,
        "/v1/triggers/{trigger}/lag",
        Spec::new("triggers", "An event trigger's lag on its topic")
            .scope(Read)
            .returns::<triggers::LagOut>(200)
            .describe("Per partition of the trigger's Kafka topic: its committed offset, the partition's end and the messages between them, with the total; 409 for a trigger that reads no topic. Without Kafka (the in-process queue of `sojourn dev`) `kafka` is false and there are no figures. 503 when Kafka does not answer."),
        triggers::lag::<S>,
    );
    r.add(
        M::POST,
        "/v1/triggers/{trigger}/activate",
        Spec::new("triggers", "Activate a trigger (init to active)")
            .scope(Write)
            .returns::<triggers::TriggerOut>(200),
        triggers::activate::<S>,
    );
    r.add(
        M::POST,
        "/v1/triggers/{trigger}/pause",
        Spec::new("triggers", "Pause a trigger (active to paused)")
            .scope(Write)
            .returns::<triggers::TriggerOut>(200),
        triggers::pause::<S>,
    );
    r.add(
        M::POST,
        "/v1/triggers/{trigger}/resume",
        Spec::new("triggers", "Resume a trigger (paused to active)")
            .scope(Write)
            .returns::<triggers::TriggerOut>(200),
        triggers::resume::<S>,
    );
    r.add(
        M::POST,
        "/v1/triggers/{trigger}/stop",
        Spec::new("triggers", "Stop a trigger")
            .scope(Write)
            .returns::<triggers::TriggerOut>(200),
        triggers::stop::<S>,
    );
    r.add(
        M::DELETE,
        "/v1/triggers/{trigger}",
        Spec::new("triggers", "Destroy a stopped trigger")
            .scope(Write)
            .returns::<triggers::TriggerOut>(200),
        triggers::destroy::<S>,
    );
    r.add(M::POST, "/trigger/{*path}", Spec::new("triggers", "Fire an api trigger").scope(Write).body::<serde_json::Map<String, Value>>().returns::<executions::Started>(201).describe("Starts the trigger's workflow with the request body (a JSON object) as input. Honours Idempotency-Key."), triggers::fire::<S>);

    // ---- audience ----------------------------------------------------------
    r.add(
        M::GET,
        "/v1/profiles",
        Spec::new("audience", "List profiles")
            .scope(Read)
            .query::<audience::ListProfiles>()
            .returns::<routes::Page<audience::ProfileOut>>(200)
            .describe("The namespace's profiles by subject."),
        audience::list::<S>,
    );
    r.add(
        M::POST,
        "/v1/profiles:batch",
        Spec::new("audience", "Write many profiles")
            .scope(Write)
            .body::<audience::ProfileBatch>()
            .returns::<audience::BatchOut>(200)
            .describe("Up to 1,000 profiles, merged (or replaced with `replace: true`), all or nothing in one transaction; an error names the profile and field (`profiles[3].email`)."),
        audience::batch::<S>,
    );
    r.add(
        M::GET,
        "/v1/profiles/{subject}",
        Spec::new("audience", "Get a profile")
            .scope(Read)
            .param("subject", audience::subject_param)
            .returns::<audience::ProfileOut>(200),
        audience::get::<S>,
    );
    r.add(
        M::POST,
        "/v1/profiles/{subject}",
        Spec::new("audience", "Create or update a profile (merge)")
            .scope(Write)
            .param("subject", audience::subject_param)
            .optional_body::<audience::ProfileIn>()
            .returns::<audience::ProfileOut>(200)
            .describe("Fields given replace what is there (`null` clears one); `attributes` and the preference maps merge key by key (a `null` attribute removes it). Channel actions with `to: \"subject\"` read the addresses at send time."),
        audience::merge::<S>,
    );
    r.add(
        M::PUT,
        "/v1/profiles/{subject}",
        Spec::new("audience", "Create or replace a profile")
            .scope(Write)
            .param("subject", audience::subject_param)
            .optional_body::<audience::ProfileIn>()
            .returns::<audience::ProfileOut>(200),
        audience::replace::<S>,
    );
    r.add(
        M::DELETE,
        "/v1/profiles/{subject}",
        Spec::new("audience", "Erase a subject (right to erasure)")
            .scope(Write)
            .param("subject", audience::subject_param)
            .returns::<audience::ErasedOut>(200)
            .describe("Deletes the profile, its segment memberships and what its frequency caps counted, blanks the recipients of its deliveries, and cancels the subject's running executions. The suppression list is not touched: addresses on it (bounced, complained, unsubscribed) stay there, so an erased person is not mailed again."),
        audience::erase::<S>,
    );
    r.add(
        M::GET,
        "/v1/suppressions",
        Spec::new("audience", "List the suppression list")
            .scope(Read)
            .query::<audience::ListSuppressions>()
            .returns::<routes::Page<audience::SuppressionOut>>(200),
        audience::suppressions::<S>,
    );
    r.add(
        M::POST,
        "/v1/suppressions",
        Spec::new("audience", "Suppress an address")
            .scope(Write)
            .body::<audience::SuppressionIn>()
            .returns::<audience::SuppressionOut>(201)
            .describe("Nothing is sent to it on that channel, whatever the category. Hard bounces and complaints reported by providers are added on their own."),
        audience::suppress::<S>,
    );
    r.add(
        M::DELETE,
        "/v1/suppressions",
        Spec::new("audience", "Remove an address from the suppression list")
            .scope(Write)
            .query::<audience::Unsuppress>()
            .returns::<audience::Removed>(200),
        audience::unsuppress::<S>,
    );
    r.add(
        M::GET,
        "/v1/frequency-caps",
        Spec::new("audience", "The namespace's frequency caps")
            .scope(Read)
            .returns::<audience::Caps>(200),
        audience::get_caps::<S>,
    );
    r.add(
        M::PUT,
        "/v1/frequency-caps",
        Spec::new("audience", "Replace the namespace's frequency caps")
            .scope(Write)
            .body::<audience::Caps>()
            .returns::<audience::Caps>(200)
            .describe("Per subject, across all journeys: at most `max_sends` of a channel and category per window. Enforced by the workers at send time, atomically across the cluster. A workflow may replace them for its own sends (`settings.frequency_caps`)."),
        audience::put_caps::<S>,
    );
    r.add(
        M::GET,
        "/v1/unsubscribe/{token}",
        Spec::new("audience", "A recipient's unsubscribe page")
            .describe("The preference page an unsubscribe link opens (no API key: the sealed token is the credential): one-click buttons, and for a subject with a profile its marketing, channel and topic preferences as a form. Reading it changes nothing."),
        audience::page::<S>,
    );
    r.add(
        M::POST,
        "/v1/unsubscribe/{token}",
        Spec::new("audience", "Unsubscribe (one-click, RFC 8058)")
            .describe("`List-Unsubscribe=One-Click` (or the page's `scope=category`) opts the recipient out of the link's category; `scope=all` out of all marketing; `scope=preferences` saves the page's form (the ticked `receive`, `channel` and `category` boxes: re-subscribing included); `scope=resubscribe` undoes an address's own opt-out (never a bounce, a complaint or an operator's entry). Changes only that recipient."),
        audience::unsubscribe::<S>,
    );

    r.add(
        M::GET,
        "/v1/segments",
        Spec::new("audience", "List segments")
            .scope(Read)
            .returns::<Vec<audience::SegmentOut>>(200),
        audience::segments::<S>,
    );
    r.add(
        M::PUT,
        "/v1/segments/{name}",
        Spec::new("audience", "Create or replace a segment")
            .scope(Write)
            .param("name", audience::name_param)
            .body::<audience::SegmentIn>()
            .returns::<audience::SegmentOut>(200)
            .describe("A CEL expression over a profile's `attributes` and `subject`, or a static list of subjects. An expression is backfilled over the namespace's profiles in the background (`backfilling` until done); from then on each profile write updates membership in its own transaction. Conditions ask `in_segment('name')`; a `segment` trigger starts a workflow on each entry (or exit)."),
        audience::put_segment::<S>,
    );
    r.add(
        M::GET,
        "/v1/segments/{name}",
        Spec::new("audience", "Get a segment and its size")
            .scope(Read)
            .param("name", audience::name_param)
            .returns::<audience::SegmentOut>(200),
        audience::get_segment::<S>,
    );
    r.add(
        M::DELETE,
        "/v1/segments/{name}",
        Spec::new("audience", "Delete a segment").scope(Write),
        audience::delete_segment::<S>,
    );
    r.add(
        M::GET,
        "/v1/segments/{name}/members",
        Spec::new("audience", "A segment's members")
            .scope(Read)
            .param("name", audience::name_param)
            .query::<audience::ListProfiles>()
            .returns::<routes::Page<String>>(200),
        audience::members::<S>,
    );

    // ---- cluster -----------------------------------------------------------
    r.add(
        M::GET,
        "/cluster",
        Spec::new("cluster", "List the live nodes")
            .scope(Read)
            .returns::<cluster::ClusterOut>(200),
        cluster::status::<S>,
    );
    r.add(M::POST, "/cluster/nodes/{node}/drain", Spec::new("cluster", "Drain a node").scope(Admin).query::<cluster::DrainQuery>().returns::<cluster::DrainOut>(202).describe("The node passivates its executions, releases their leases and takes no new ones; the other nodes take over. Draining the last node that takes work is refused (409) unless `force=true`: it would leave nothing to run the executions."), cluster::drain::<S>);
    r.add(
        M::POST,
        sojourn_actors::DELIVER_PATH,
        Spec::new("cluster", "Internal: inputs forwarded by another node")
            .cluster_only()
            .body::<Vec<serde_json::Value>>()
            .describe("Only for nodes of the cluster: needs the x-sojourn-cluster-secret header."),
        cluster::deliver::<S>,
    );

    // ---- keys --------------------------------------------------------------
    r.add(
        M::POST,
        "/v1/keys",
        Spec::new("keys", "Create an API key")
            .scope(Admin)
            .body::<keys::CreateKey>()
            .returns::<keys::KeyOut>(201),
        keys::create::<S>,
    );
    r.add(
        M::GET,
        "/v1/keys",
        Spec::new("keys", "List API keys")
            .scope(Admin)
            .returns::<Vec<keys::KeyOut>>(200),
        keys::list::<S>,
    );
    r.add(
        M::DELETE,
        "/v1/keys/{key}",
        Spec::new("keys", "Revoke an API key")
            .scope(Admin)
            .returns::<keys::KeyOut>(200),
        keys::revoke::<S>,
    );

    let table = r.table.clone();
    let (router, openapi) = r.finish();
    let _ = doc.set(openapi.clone());
    let router = router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES))
        .layer(from_fn_with_state(state.clone(), observe::<S>))
        .with_state(state);
    Api {
        router,
        openapi,
        routes: table.into_iter().map(|(m, p)| (m, p.to_owned())).collect(),
    }
}

/// The console's files and pages (`console::serves`), else a JSON 404.
async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    if console::serves(req.method())
        && let Some(page) = console::respond(path, req.headers())
    {
        return page;
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {} {} (see /openapi.json)",
            req.method(),
            req.uri().path()
        ),
    )
    .into_response()
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// Records each request's latency by method, matched route and status, in
/// a span of its own (`http.request`).
async fn observe<S: Store>(State(app): State<AppState<S>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Known methods only: a made-up one must not create a series.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // The request's span: the execution it starts joins its trace.
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    app.http_seconds
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response.into_response()
}
