//! Validation and compilation: a [`Workflow`] document becomes a
//! [`CompiledWorkflow`] (expressions parsed, templates compiled, durations
//! and zones resolved, edges indexed), or every problem is reported at once.

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde_json::Value;

use crate::error::{Error, ValidationError};
use crate::expr::{ExecutionInfo, Expr, Scope};
use crate::ids::{ExecutionId, NodeId};
use crate::model::{NodeKind, Workflow};
use crate::nodes;
use crate::registry::Registry;
use crate::snapshot::Snapshot;
use crate::template::{Templated, Templates};
use crate::time::DailyWindow;

/// Checks a workflow against the built-in action registry and returns every
/// problem, each naming its node (or edge) and field.
pub fn validate(workflow: &Workflow) -> Result<(), Vec<ValidationError>> {
    CompiledWorkflow::compile(workflow, &Registry::builtin()).map(|_| ())
}

/// Collects errors while node modules compile their configs.
#[derive(Debug)]
pub(crate) struct Compiler<'r> {
    pub(crate) registry: &'r Registry,
    pub(crate) templates: Templates,
    errors: Vec<ValidationError>,
    /// An expression calls `in_segment`.
    reads_segments: bool,
}

impl Compiler<'_> {
    pub(crate) fn error(
        &mut self,
        node: &NodeId,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors
            .push(ValidationError::at_node(node, field, message));
    }

    /// How many errors this node has so far.
    pub(crate) fn errors_at(&self, node: &NodeId) -> usize {
        self.errors
            .iter()
            .filter(|e| e.node.as_ref() == Some(node))
            .count()
    }

    pub(crate) fn expr(&mut self, node: &NodeId, field: &str, source: &str) -> Option<Expr> {
        if source.contains("in_segment") {
            self.reads_segments = true;
        }
        Expr::compile(source)
            .map_err(|e| self.error(node, field, e))
            .ok()
    }

    pub(crate) fn duration(&mut self, node: &NodeId, field: &str, text: &str) -> Option<Duration> {
        crate::time::parse_duration(text)
            .map_err(|e| self.error(node, field, e))
            .ok()
    }

    pub(crate) fn timezone(&mut self, node: &NodeId, field: &str, text: &str) -> Option<Tz> {
        crate::time::parse_timezone(text)
            .map_err(|e| self.error(node, field, e))
            .ok()
    }

    /// Compiles a templated JSON value; templates are named after the node.
    pub(crate) fn templated(&mut self, node: &NodeId, field: &str, value: &Value) -> Templated {
        let mut errors = Vec::new();
        let t = Templated::compile(
            value,
            field,
            node.as_str(),
            &mut self.templates,
            &mut errors,
        );
        for (field, message) in errors {
            self.error(node, field, message);
        }
        t
    }
}

/// A node's compiled config.
#[derive(Debug)]
pub(crate) enum CompiledKind {
    Start,
    Action(nodes::action::Compiled),
    Delay(nodes::delay::Compiled),
    WaitForEvent(nodes::wait_for_event::Compiled),
    Condition(Option<Expr>),
    Split(nodes::split::Compiled),
    Function(Vec<(String, Option<Expr>)>),
    Exit(Option<String>),
}

/// Which exits a node has.
enum Branches {
    /// One unlabeled exit.
    Single,
    Labeled {
        required: Vec<String>,
        optional: Vec<String>,
    },
    /// No exit (an `exit` node).
    Terminal,
}

impl CompiledKind {
    fn branches(&self) -> Branches {
        let labels = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self {
            CompiledKind::Start | CompiledKind::Delay(_) | CompiledKind::Function(_) => {
                Branches::Single
            }
            CompiledKind::Action(_) => Branches::Labeled {
                required: labels(&["success"]),
                optional: labels(&["failure", "skipped"]),
            },
            CompiledKind::WaitForEvent(w) => Branches::Labeled {
                required: if w.has_timeout {
                    labels(&["event", "timeout"])
                } else {
                    labels(&["event"])
                },
                optional: Vec::new(),
            },
            CompiledKind::Condition(_) => Branches::Labeled {
                required: labels(&["true", "false"]),
                optional: Vec::new(),
            },
            CompiledKind::Split(s) => Branches::Labeled {
                required: s.branches(),
                optional: Vec::new(),
            },
            CompiledKind::Exit(_) => Branches::Terminal,
        }
    }
}

/// A node, ready to run.
#[derive(Debug)]
pub struct CompiledNode {
    pub(crate) id: NodeId,
    pub(crate) type_name: &'static str,
    pub(crate) kind: CompiledKind,
    /// Outgoing edges: branch label (None for a single exit) → node index.
    next: Vec<(Option<String>, usize)>,
}

impl CompiledNode {
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    pub fn type_name(&self) -> &'static str {
        self.type_name
    }

    pub(crate) fn next(&self, branch: Option<&str>) -> Option<usize> {
        self.next
            .iter()
            .find(|(b, _)| b.as_deref() == branch)
            .map(|(_, i)| *i)
    }

    pub(crate) fn has_branch(&self, branch: &str) -> bool {
        self.next(Some(branch)).is_some()
    }
}

/// Journey-level settings, resolved.
#[derive(Debug)]
pub(crate) struct CompiledSettings {
    pub(crate) timezone: Tz,
    pub(crate) subject: Option<Expr>,
    pub(crate) exit_criteria: Vec<CompiledExit>,
    pub(crate) quiet_hours: Option<DailyWindow>,
    pub(crate) max_entries_per_subject: Option<u32>,
    /// Carried by each of the workflow's messaging dispatches.
    pub(crate) frequency_caps: Option<std::sync::Arc<crate::caps::WorkflowCaps>>,
    /// The goal's event and window.
    pub(crate) goal: Option<(String, Duration)>,
    /// Held out: entrants whose bucket (of 10,000) is below this.
    pub(crate) holdout_below: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct CompiledExit {
    pub(crate) event: String,
    pub(crate) condition: Option<Expr>,
    pub(crate) outcome: String,
}

/// A validated workflow, ready to drive executions. Cheap to share between
/// threads; build it once per published version.
#[derive(Debug)]
pub struct CompiledWorkflow {
    workflow: Workflow,
    pub(crate) nodes: Vec<CompiledNode>,
    index: HashMap<NodeId, usize>,
    pub(crate) start: usize,
    pub(crate) templates: Templates,
    pub(crate) settings: CompiledSettings,
    reads_segments: bool,
}

impl CompiledWorkflow {
    /// The custom actions this workflow uses, each with the registry
    /// version it was compiled against (what a published version pins).
    pub fn pins(&self) -> std::collections::BTreeMap<String, i32> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.kind {
                CompiledKind::Action(a) => a.pin.clone(),
                _ => None,
            })
            .collect()
    }

    /// Validates and compiles. Every problem is returned, not just the first.
    pub fn compile(
        workflow: &Workflow,
        registry: &Registry,
    ) -> Result<CompiledWorkflow, Vec<ValidationError>> {
        let mut c = Compiler {
            registry,
            templates: Templates::new(),
            errors: Vec::new(),
            reads_segments: false,
        };

        // Ids.
        let mut index = HashMap::with_capacity(workflow.nodes.len());
        for (i, node) in workflow.nodes.iter().enumerate() {
            if !node.id.is_well_formed() {
                c.errors.push(ValidationError::node(
                    i,
                    Some(&node.id),
                    "id",
                    "must be 1 to 128 letters, digits, '_' or '-'",
                ));
            }
            if index.contains_key(&node.id) {
                c.errors.push(ValidationError::node(
                    i,
                    Some(&node.id),
                    "id",
                    "duplicate node id",
                ));
            } else {
                index.insert(node.id.clone(), i);
            }
        }
        if workflow.nodes.is_empty() {
            c.errors.push(ValidationError::document(
                "nodes",
                "a workflow needs at least a start node",
            ));
        }

        // Configs.
        let mut compiled: Vec<CompiledNode> = workflow
            .nodes
            .iter()
            .map(|node| {
                let id = &node.id;
                let kind = match &node.kind {
                    NodeKind::Start(cfg) => {
                        nodes::start::compile(cfg, id, &mut c);
                        CompiledKind::Start
                    }
                    NodeKind::Action(cfg) => {
                        CompiledKind::Action(nodes::action::compile(cfg, id, &mut c))
                    }
                    NodeKind::Delay(cfg) => {
                        CompiledKind::Delay(nodes::delay::compile(cfg, id, &mut c))
                    }
                    NodeKind::WaitForEvent(cfg) => {
                        CompiledKind::WaitForEvent(nodes::wait_for_event::compile(cfg, id, &mut c))
                    }
                    NodeKind::Condition(cfg) => {
                        CompiledKind::Condition(nodes::condition::compile(cfg, id, &mut c))
                    }
                    NodeKind::Split(cfg) => {
                        CompiledKind::Split(nodes::split::compile(cfg, id, &mut c))
                    }
                    NodeKind::Function(cfg) => {
                        CompiledKind::Function(nodes::function::compile(cfg, id, &mut c))
                    }
                    NodeKind::Exit(cfg) => {
                        CompiledKind::Exit(nodes::exit::compile(cfg, id, &mut c))
                    }
                };
                CompiledNode {
                    id: id.clone(),
                    type_name: node.kind.type_name(),
                    kind,
                    next: Vec::new(),
                }
            })
            .collect();

        let settings = compile_settings(workflow, &mut c);

        // Start.
        let starts: Vec<usize> = compiled
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.kind, CompiledKind::Start))
            .map(|(i, _)| i)
            .collect();
        if starts.len() > 1 {
            for &i in &starts[1..] {
                c.error(
                    &compiled[i].id,
                    "type",
                    "a workflow has exactly one start node; this is another",
                );
            }
        } else if starts.is_empty() && !workflow.nodes.is_empty() {
            c.errors.push(ValidationError::document(
                "nodes",
                "no node of type \"start\"",
            ));
        }

        // Edges.
        for (e, edge) in workflow.edges.iter().enumerate() {
            let from = index.get(&edge.from).copied();
            let to = index.get(&edge.to).copied();
            if from.is_none() {
                c.errors.push(ValidationError::at_edge(
                    e,
                    "from",
                    format!("no node {:?}", edge.from.as_str()),
                ));
            }
            if to.is_none() {
                c.errors.push(ValidationError::at_edge(
                    e,
                    "to",
                    format!("no node {:?}", edge.to.as_str()),
                ));
            }
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            if matches!(compiled[to].kind, CompiledKind::Start) {
                c.errors.push(ValidationError::at_edge(
                    e,
                    "to",
                    "no edge may lead into the start node",
                ));
                continue;
            }
            let branch = edge.branch.as_deref();
            let allowed = match (compiled[from].kind.branches(), branch) {
                (Branches::Single, None) => Ok(()),
                (Branches::Single, Some(b)) => Err(format!(
                    "a {} node has a single exit and takes no branch label (got {b:?})",
                    compiled[from].type_name
                )),
                (Branches::Terminal, _) => Err("an exit node has no outgoing edges".to_owned()),
                (Branches::Labeled { required, optional }, b) => {
                    let labels: Vec<&String> = required.iter().chain(optional.iter()).collect();
                    match b {
                        Some(b) if labels.iter().any(|l| *l == b) => Ok(()),
                        _ => Err(format!(
                            "a {} node's branch must be one of {}{}",
                            compiled[from].type_name,
                            labels
                                .iter()
                                .map(|l| format!("{l:?}"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            b.map(|b| format!(" (got {b:?})"))
                                .unwrap_or_else(|| " (got none)".into())
                        )),
                    }
                }
            };
            if let Err(message) = allowed {
                c.errors
                    .push(ValidationError::at_edge(e, "branch", message));
                continue;
            }
            if compiled[from].next(branch).is_some() {
                c.errors.push(ValidationError::at_edge(
                    e,
                    "branch",
                    format!(
                        "node {:?} already has an edge for {}",
                        edge.from.as_str(),
                        branch.map_or("its exit".to_owned(), |b| format!("branch {b:?}"))
                    ),
                ));
                continue;
            }
            compiled[from].next.push((edge.branch.clone(), to));
        }

        // Missing exits.
        for node in &compiled {
            match node.kind.branches() {
                Branches::Single if node.next(None).is_none() => {
                    c.error(
                        &node.id,
                        "edges",
                        "has no outgoing edge (end a path with an exit node)",
                    );
                }
                Branches::Labeled { required, .. } => {
                    for b in required.iter().filter(|b| !node.has_branch(b)) {
                        c.error(&node.id, "edges", format!("missing the {b:?} branch"));
                    }
                }
                _ => {}
            }
        }

        // Reachability.
        if let Some(&start) = starts.first() {
            let mut seen = vec![false; compiled.len()];
            let mut queue = VecDeque::from([start]);
            seen[start] = true;
            while let Some(i) = queue.pop_front() {
                for &(_, j) in &compiled[i].next {
                    if !seen[j] {
                        seen[j] = true;
                        queue.push_back(j);
                    }
                }
            }
            for (i, node) in compiled.iter().enumerate() {
                if !seen[i] {
                    c.error(&node.id, "", "unreachable from the start node");
                }
            }
        }

        // Cycles that never wait: a loop must pass through a delay or a
        // wait_for_event node, or an execution would spin (or message a
        // customer in a hot loop).
        for cycle in instant_cycles(&compiled) {
            let path: Vec<&str> = cycle.iter().map(|&i| compiled[i].id.as_str()).collect();
            c.error(
                &compiled[cycle[0]].id,
                "edges",
                format!(
                    "cycle {} → {} passes through no delay (of a positive duration or a time of day) or wait_for_event node",
                    path.join(" → "),
                    path[0]
                ),
            );
        }

        if !c.errors.is_empty() {
            return Err(c.errors);
        }
        Ok(CompiledWorkflow {
            workflow: workflow.clone(),
            nodes: compiled,
            index,
            start: starts[0],
            templates: c.templates,
            settings,
            reads_segments: c.reads_segments,
        })
    }

    /// Whether an expression asks `in_segment(…)`: the actor reads the
    /// subject's segments before each step.
    pub fn reads_segments(&self) -> bool {
        self.reads_segments
    }

    /// The document this was compiled from.
    pub fn workflow(&self) -> &Workflow {
        &self.workflow
    }

    pub fn node_by_id(&self, id: &str) -> Option<&CompiledNode> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    pub(crate) fn node_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The default time zone of executions.
    pub fn timezone(&self) -> Tz {
        self.settings.timezone
    }

    /// The conversion goal: its event and how long after entry it counts.
    pub fn goal(&self) -> Option<(&str, Duration)> {
        self.settings.goal.as_ref().map(|(e, d)| (e.as_str(), *d))
    }

    /// Whether an execution of this workflow with this subject (or, without
    /// one, this execution id) is held out: a stable hash of the
    /// workflow's key and it, in 10,000 buckets.
    pub fn held_out(&self, subject_or_id: &str) -> bool {
        self.holdout_below().is_some_and(|below| {
            let key = self.workflow.key.as_deref().unwrap_or_default();
            crate::hash::holdout_bucket(key, subject_or_id) < below
        })
    }

    /// Held out: entrants whose [`crate::hash::holdout_bucket`] is below
    /// this.
    pub fn holdout_below(&self) -> Option<u64> {
        self.settings.holdout_below
    }

    /// The maximum number of executions per subject, if the workflow limits it.
    pub fn max_entries_per_subject(&self) -> Option<u32> {
        self.settings.max_entries_per_subject
    }

    /// Whether an execution's time zone should come from its subject's
    /// profile: the workflow fixes none, and something in it reads local
    /// time (quiet hours, a `time_of_day` delay without its own zone).
    pub fn zone_from_profile(&self) -> bool {
        self.workflow.settings.timezone.is_none()
            && (self.settings.quiet_hours.is_some()
                || self.nodes.iter().any(|n| {
                    matches!(
                        n.kind,
                        CompiledKind::Delay(nodes::delay::Compiled::TimeOfDay { tz: None, .. })
                    )
                }))
    }

    /// A new execution: resolves its time zone (the given one, else the
    /// workflow's) and its subject (the given one, else the workflow's
    /// `settings.subject` expression over the input). The input must be a
    /// JSON object (`null` counts as `{}`).
    pub fn new_execution(
        &self,
        id: ExecutionId,
        input: Value,
        subject: Option<String>,
        timezone: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Snapshot, Error> {
        let input = match input {
            Value::Null => Value::Object(Default::default()),
            Value::Object(_) => input,
            other => {
                return Err(Error::InvalidStart {
                    field: "input",
                    message: format!("must be a JSON object, got {}", json_type(&other)),
                });
            }
        };
        let timezone = match timezone {
            Some(tz) => crate::time::parse_timezone(tz).map_err(|message| Error::InvalidStart {
                field: "timezone",
                message,
            })?,
            None => self.settings.timezone,
        };
        let subject = match (subject, &self.settings.subject) {
            (Some(s), _) if s.is_empty() => {
                return Err(Error::InvalidStart {
                    field: "subject",
                    message: "must not be empty".into(),
                });
            }
            (Some(s), _) => Some(s),
            (None, Some(expr)) => {
                let vars = Default::default();
                let nodes = Default::default();
                let scope = Scope {
                    input: &input,
                    vars: &vars,
                    subject: None,
                    event: None,
                    nodes: &nodes,
                    segments: None,
                    execution: ExecutionInfo {
                        id: &id,
                        started_at: None,
                    },
                    now,
                };
                match expr.eval(&scope) {
                    Ok(Value::String(s)) if !s.is_empty() => Some(s),
                    Ok(Value::Number(n)) => Some(n.to_string()),
                    Ok(Value::Null) => None,
                    Ok(other) => {
                        return Err(Error::InvalidStart {
                            field: "subject",
                            message: format!(
                                "settings.subject ({}) gave {}, not a string",
                                expr.source(),
                                json_type(&other)
                            ),
                        });
                    }
                    Err(message) => {
                        return Err(Error::InvalidStart {
                            field: "input",
                            message,
                        });
                    }
                }
            }
            (None, None) => None,
        };
        Ok(Snapshot::new(id, input, subject, timezone, now))
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn compile_settings(workflow: &Workflow, c: &mut Compiler<'_>) -> CompiledSettings {
    let s = &workflow.settings;
    let doc_error = |c: &mut Compiler<'_>, field: String, message: String| {
        c.errors.push(ValidationError::document(field, message));
    };
    let timezone = match &s.timezone {
        Some(tz) => crate::time::parse_timezone(tz).unwrap_or_else(|e| {
            doc_error(c, "settings.timezone".into(), e);
            Tz::UTC
        }),
        None => Tz::UTC,
    };
    let subject = s.subject.as_deref().and_then(|src| {
        if src.contains("in_segment") {
            doc_error(
                c,
                "settings.subject".into(),
                "in_segment() is not available here (the subject is not known yet)".into(),
            );
        }
        Expr::compile(src)
            .map_err(|e| doc_error(c, "settings.subject".into(), e))
            .ok()
    });
    let mut exit_criteria = Vec::new();
    for (i, ec) in s.exit_criteria.iter().enumerate() {
        if ec.event.trim().is_empty() {
            doc_error(
                c,
                format!("settings.exit_criteria[{i}].event"),
                "must not be empty".into(),
            );
        }
        let condition = ec.condition.as_deref().and_then(|src| {
            if src.contains("in_segment") {
                c.reads_segments = true;
            }
            Expr::compile(src)
                .map_err(|e| doc_error(c, format!("settings.exit_criteria[{i}].condition"), e))
                .ok()
        });
        exit_criteria.push(CompiledExit {
            event: ec.event.clone(),
            condition,
            outcome: ec
                .outcome
                .clone()
                .unwrap_or_else(|| format!("exited:{}", ec.event)),
        });
    }
    let quiet_hours = s.quiet_hours.as_ref().and_then(|q| {
        let start = crate::time::parse_time_of_day(&q.start)
            .map_err(|e| doc_error(c, "settings.quiet_hours.start".into(), e))
            .ok();
        let end = crate::time::parse_time_of_day(&q.end)
            .map_err(|e| doc_error(c, "settings.quiet_hours.end".into(), e))
            .ok();
        match (start, end) {
            (Some(start), Some(end)) if start == end => {
                doc_error(
                    c,
                    "settings.quiet_hours.end".into(),
                    "must differ from start".into(),
                );
                None
            }
            (Some(start), Some(end)) => Some(DailyWindow { start, end }),
            _ => None,
        }
    });
    if s.max_entries_per_subject == Some(0) {
        doc_error(
            c,
            "settings.max_entries_per_subject".into(),
            "must be at least 1".into(),
        );
    }
    let frequency_caps =
        s.frequency_caps
            .as_ref()
            .and_then(|f| match crate::caps::WorkflowCaps::of(f) {
                Ok(caps) => caps.map(std::sync::Arc::new),
                Err((field, message)) => {
                    doc_error(c, format!("settings.frequency_caps.caps{field}"), message);
                    None
                }
            });
    let goal = s.goal.as_ref().and_then(|g| {
        if g.event.trim().is_empty() {
            doc_error(c, "settings.goal.event".into(), "must not be empty".into());
        }
        let within = match crate::time::parse_duration(&g.within) {
            Ok(d) if d <= Duration::zero() => {
                doc_error(
                    c,
                    "settings.goal.within".into(),
                    "must be longer than zero".into(),
                );
                None
            }
            Ok(d) if d > Duration::days(365) => {
                doc_error(
                    c,
                    "settings.goal.within".into(),
                    "must be at most 365d".into(),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                doc_error(c, "settings.goal.within".into(), e);
                None
            }
        };
        within.map(|d| (g.event.clone(), d))
    });
    let holdout_below = s.holdout.as_ref().and_then(|h| {
        let below = h.below();
        if below.is_none() {
            doc_error(
                c,
                "settings.holdout.percent".into(),
                "must be above 0 and below 100 (two decimals at most count)".into(),
            );
        }
        below
    });
    CompiledSettings {
        timezone,
        subject,
        exit_criteria,
        quiet_hours,
        max_entries_per_subject: s.max_entries_per_subject,
        frequency_caps,
        goal,
        holdout_below,
    }
}

/// Cycles in the graph with delay and wait_for_event nodes removed: each is
/// a loop an execution could run without ever waiting. Returns one cycle
/// (as node indices) per strongly connected component that has one.
fn instant_cycles(nodes: &[CompiledNode]) -> Vec<Vec<usize>> {
    // Only waits that always take time break a loop: a `0s` delay or an
    // `until` timestamp (already past on the second lap) do not.
    let waits = |i: usize| match &nodes[i].kind {
        CompiledKind::Delay(nodes::delay::Compiled::For(d)) => *d > Duration::zero(),
        CompiledKind::Delay(nodes::delay::Compiled::TimeOfDay { .. }) => true,
        CompiledKind::Delay(nodes::delay::Compiled::Until(_)) => false,
        CompiledKind::WaitForEvent(_) => true,
        _ => false,
    };
    // Iterative DFS with colours; on a back edge, read the cycle off the stack.
    let n = nodes.len();
    let mut colour = vec![0u8; n]; // 0 new, 1 on stack, 2 done
    let mut reported: HashSet<usize> = HashSet::new();
    let mut cycles = Vec::new();
    for root in 0..n {
        if colour[root] != 0 || waits(root) {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        colour[root] = 1;
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            if let Some(&(_, w)) = nodes[v].next.get(*next) {
                *next += 1;
                if waits(w) {
                    continue;
                }
                match colour[w] {
                    0 => {
                        colour[w] = 1;
                        stack.push((w, 0));
                    }
                    1 => {
                        let pos = stack.iter().position(|&(u, _)| u == w).unwrap_or(0);
                        let cycle: Vec<usize> = stack[pos..].iter().map(|&(u, _)| u).collect();
                        if cycle.iter().all(|u| !reported.contains(u)) {
                            reported.extend(cycle.iter().copied());
                            cycles.push(cycle);
                        }
                    }
                    _ => {}
                }
            } else {
                colour[v] = 2;
                stack.pop();
            }
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::nodes::testing::errors_of;

    #[test]
    fn reports_every_graph_problem_at_once() {
        let doc = json!({
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "start2", "type": "start"},
                {"id": "a", "type": "function", "config": {"assign": [{"var": "x", "expression": "1"}]}},
                {"id": "a", "type": "exit"},
                {"id": "bad id!", "type": "exit"},
                {"id": "lonely", "type": "exit"},
            ],
            "edges": [
                {"from": "start", "to": "a"},
                {"from": "a", "to": "ghost"},
                {"from": "start", "to": "start2"},
                {"from": "start", "to": "lonely", "branch": "yes"},
            ]
        });
        assert_eq!(
            errors_of(&doc),
            [
                "a:id",
                "bad id!:id",
                "start2:type",
                ":edges[1].to",
                ":edges[2].to",
                ":edges[3].branch",
                "start2:edges",
                "a:edges",
                "start2:",
                "a:",
                "bad id!:",
                "lonely:",
            ]
        );
    }

    #[test]
    fn rejects_a_cycle_without_a_wait_but_accepts_one_through_a_delay() {
        let looped = |middle: serde_json::Value| {
            json!({
                "nodes": [
                    {"id": "start", "type": "start"},
                    {"id": "check", "type": "condition", "config": {"expression": "vars.n < 3"}},
                    middle,
                    {"id": "done", "type": "exit"},
                ],
                "edges": [
                    {"from": "start", "to": "check"},
                    {"from": "check", "to": "step", "branch": "true"},
                    {"from": "check", "to": "done", "branch": "false"},
                    {"from": "step", "to": "check"},
                ]
            })
        };
        let errors = errors_of(&looped(json!({"id": "step", "type": "function",
            "config": {"assign": [{"var": "n", "expression": "1"}]}})));
        assert_eq!(errors, ["check:edges"]);
        assert!(
            errors_of(&looped(
                json!({"id": "step", "type": "delay", "config": {"duration": "1d"}})
            ))
            .is_empty()
        );
        // Waits that take no time do not break a loop.
        for config in [
            json!({"duration": "0s"}),
            json!({"until": "2020-01-01T00:00:00Z"}),
        ] {
            let errors = errors_of(&looped(
                json!({"id": "step", "type": "delay", "config": config}),
            ));
            assert_eq!(errors, ["check:edges"]);
        }
    }

    #[test]
    fn settings_are_validated() {
        let doc = json!({
            "settings": {
                "timezone": "Europe/Pariss",
                "subject": "input.",
                "exit_criteria": [{"event": "", "condition": "event.payload.x >"}],
                "quiet_hours": {"start": "21:00", "end": "21:00"},
                "max_entries_per_subject": 0,
                "frequency_caps": {"caps": [{"channel": "email", "category": "*", "max_sends": 2, "window": "2y"}]},
            },
            "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "exit"}],
            "edges": [{"from": "start", "to": "end"}],
        });
        assert_eq!(
            errors_of(&doc),
            [
                ":settings.timezone",
                ":settings.subject",
                ":settings.exit_criteria[0].event",
                ":settings.exit_criteria[0].condition",
                ":settings.quiet_hours.end",
                ":settings.max_entries_per_subject",
                ":settings.frequency_caps.caps[0].window",
            ]
        );
        for (goal, holdout, field) in [
            (
                json!({"event": "buy", "within": "0s"}),
                10.0,
                ":settings.goal.within",
            ),
            (
                json!({"event": "buy", "within": "400d"}),
                10.0,
                ":settings.goal.within",
            ),
            (
                json!({"event": "buy", "within": "soon"}),
                10.0,
                ":settings.goal.within",
            ),
            (
                json!({"event": " ", "within": "1d"}),
                10.0,
                ":settings.goal.event",
            ),
            (
                json!({"event": "buy", "within": "1d"}),
                0.0,
                ":settings.holdout.percent",
            ),
            (
                json!({"event": "buy", "within": "1d"}),
                100.0,
                ":settings.holdout.percent",
            ),
            (
                json!({"event": "buy", "within": "1d"}),
                0.004,
                ":settings.holdout.percent",
            ),
            (
                json!({"event": "buy", "within": "1d"}),
                99.996,
                ":settings.holdout.percent",
            ),
        ] {
            let doc = json!({
                "settings": {"goal": goal, "holdout": {"percent": holdout}},
                "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "exit"}],
                "edges": [{"from": "start", "to": "end"}],
            });
            assert_eq!(errors_of(&doc), [field], "{goal} {holdout}");
        }
    }

    #[test]
    fn the_holdout_is_its_share_of_subjects_and_the_same_every_time() {
        let doc = |key: &str, percent: f64| {
            let wf = Workflow::from_value(json!({
                "key": key,
                "settings": {"holdout": {"percent": percent}, "goal": {"event": "buy", "within": "7d"}},
                "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "exit"}],
                "edges": [{"from": "start", "to": "end"}],
            }))
            .expect("parses");
            CompiledWorkflow::compile(&wf, &Registry::builtin()).expect("compiles")
        };
        let ten = doc("welcome", 10.0);
        let subjects: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let held: Vec<&String> = subjects.iter().filter(|s| ten.held_out(s)).collect();
        // 10 % of 20,000 is 2,000; three standard deviations are 127.
        assert!((1_873..=2_127).contains(&held.len()), "{}", held.len());
        // The same people, compiled again; others in another workflow.
        let again = doc("welcome", 10.0);
        assert!(held.iter().all(|s| again.held_out(s)));
        let other = doc("winback", 10.0);
        let both = held.iter().filter(|s| other.held_out(s)).count();
        assert!(both < 400, "{both}");
        // A larger share keeps everyone a smaller one held out.
        let twenty = doc("welcome", 20.0);
        assert!(held.iter().all(|s| twenty.held_out(s)));
        assert_eq!(ten.goal().map(|(e, d)| (e, d.num_days())), Some(("buy", 7)));
    }

    #[test]
    fn documents_with_unknown_types_and_misspelt_fields_are_reported_per_node() {
        let text = r#"{
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "x", "type": "teleport"},
                {"id": "y", "type": "delay", "config": {"duration": 5}},
                {"id": "z", "type": "condition", "config": {"expresion": "true"}},
                {"type": "exit"}
            ],
            "edges": []
        }"#;
        let errors = Workflow::from_json(text).expect_err("bad document");
        let described: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(described.len(), 4, "{described:#?}");
        assert!(
            described[0].starts_with("node \"x\": type: unknown node type \"teleport\""),
            "{}",
            described[0]
        );
        assert!(
            described[1].starts_with("node \"y\": config.duration: invalid type"),
            "{}",
            described[1]
        );
        assert!(
            described[2].contains("node \"z\": config"),
            "{}",
            described[2]
        );
        assert!(described[2].contains("expresion"), "{}", described[2]);
        assert!(
            described[3].starts_with("nodes[4]: missing field `id`"),
            "{}",
            described[3]
        );
        assert!(Workflow::from_json("{").is_err());
        assert!(Workflow::from_json(r#"{"nodes": [], "edgez": []}"#).is_err());
    }

    #[test]
    fn new_execution_resolves_subject_and_zone_and_refuses_bad_starts() {
        let doc = json!({
            "settings": {"subject": "input.user_id", "timezone": "Asia/Tokyo"},
            "nodes": [{"id": "start", "type": "start"}, {"id": "end", "type": "exit"}],
            "edges": [{"from": "start", "to": "end"}],
        });
        let wf = crate::nodes::testing::compile(&doc);
        let now = Utc::now();
        let s = wf
            .new_execution(
                ExecutionId::new("e"),
                json!({"user_id": 42}),
                None,
                None,
                now,
            )
            .expect("starts");
        assert_eq!(s.subject.as_deref(), Some("42"));
        assert_eq!(s.timezone, chrono_tz::Asia::Tokyo);
        let s = wf
            .new_execution(
                ExecutionId::new("e"),
                json!({"user_id": "u"}),
                Some("given".into()),
                Some("UTC"),
                now,
            )
            .expect("starts");
        assert_eq!((s.subject.as_deref(), s.timezone), (Some("given"), Tz::UTC));
        let field = |r: Result<Snapshot, Error>| match r {
            Err(Error::InvalidStart { field, .. }) => field,
            other => panic!("expected InvalidStart, got {other:?}"),
        };
        assert_eq!(
            field(wf.new_execution(ExecutionId::new("e"), json!([1]), None, None, now)),
            "input"
        );
        assert_eq!(
            field(wf.new_execution(
                ExecutionId::new("e"),
                json!({}),
                None,
                Some("Mars/Base"),
                now
            )),
            "timezone"
        );
        assert_eq!(
            field(wf.new_execution(
                ExecutionId::new("e"),
                json!({"user_id": [1]}),
                None,
                None,
                now
            )),
            "subject"
        );
    }
}
