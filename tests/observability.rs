//! The monitoring artefacts, checked with promtool and against a running gateway:
//!
//! - `deploy/prometheus/nxgate-rules.yaml`: `promtool check rules`; its unit tests
//!   (`nxgate-rules.test.yaml`) pass under `promtool test rules`, and every alert has a
//!   case where it fires and one where it stays quiet; every alert has a severity and the
//!   `summary`, `description` and `runbook` annotations, and a line in the docs.
//! - `deploy/prometheus/prometheusrule.yaml`: the same groups as a Prometheus Operator
//!   `PrometheusRule` (outside `deploy/kubernetes/`, whose manifests tests/deploy.rs
//!   validates against the built-in kinds only).
//! - `deploy/grafana/nxgate.json`: parses, every panel queries something, the topics are
//!   all there, and every query is PromQL that promtool accepts.
//! - Every metric the dashboard and the rules name is in a fresh gateway's first scrape.
//!
//! promtool is installed by `scripts/install-promtool.sh`. A missing promtool fails the
//! test (it never skips), naming that script.

mod common;

use common::*;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const RULES: &str = "deploy/prometheus/nxgate-rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/nxgate-rules.test.yaml";
const PROMETHEUS_RULE: &str = "deploy/prometheus/prometheusrule.yaml";
const DASHBOARD: &str = "deploy/grafana/nxgate.json";
/// The alerts the rules file must define.
const ALERTS: [&str; 8] = [
    "NxgateCredentialsRejected",
    "NxgateUpstreamVerificationFailures",
    "NxgateUpstreamBusyBackoff",
    "NxgateHigh5xxRatio",
    "NxgateCallbacksWaitingTooLong",
    "NxgateCallbackDeadLetters",
    "NxgateRedisDown",
    "NxgateDown",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn yaml(rel: &str) -> Value {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not YAML: {e}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v:?}"))
}

fn seq(v: &Value) -> &Vec<Value> {
    v.as_sequence().unwrap_or_else(|| panic!("expected a list, got {v:?}"))
}

/// promtool, found on PATH; fails (never skips) when it is missing.
fn promtool() -> Command {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).map(|d| d.join("promtool")).find(|p| p.is_file());
    let Some(found) = found else {
        panic!(
            "`promtool` is not on PATH: the alerting rules are checked and unit-tested with it. \
             Run `bash scripts/install-promtool.sh` (installs Debian's prometheus package, \
             which ships promtool), then run the tests again."
        )
    };
    Command::new(found)
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every alerting rule of a `groups:` list.
fn alert_rules(groups: &Value) -> Vec<&Value> {
    seq(groups).iter().flat_map(|g| seq(&g["rules"])).filter(|r| r.get("alert").is_some()).collect()
}

/// The rules file's alerting rules, by name.
fn alerts() -> BTreeMap<String, Value> {
    let rules = yaml(RULES);
    alert_rules(&rules["groups"]).into_iter().map(|r| (s(&r["alert"]).to_owned(), r.clone())).collect()
}

/// Every panel of the dashboard, those inside rows included (rows themselves left out).
fn dashboard_panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(panels: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in panels.as_array().into_iter().flatten() {
            if p["type"] == "row" {
                walk(&p["panels"], out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: not JSON: {e}"))
}

/// Every query of the dashboard: (panel title, expression).
fn dashboard_exprs() -> Vec<(String, String)> {
    let d = dashboard();
    dashboard_panels(&d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or_default().to_owned()))
        })
        .collect()
}

/// The metric names an expression uses: identifiers starting `nxgate_` or `process_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    for prefix in ["nxgate_", "process_"] {
        for (at, _) in expr.match_indices(prefix) {
            if expr[..at].chars().next_back().is_some_and(ident) {
                continue;
            }
            let name: String =
                expr[at..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect::<String>();
            // Not a metric name when part of a longer identifier (`nxgate_x2`).
            if expr[at + name.len()..].chars().next().is_some_and(ident) {
                continue;
            }
            out.insert(name);
        }
    }
    out
}

// ---------------------------------------------------------------- promtool

#[test]
fn the_rules_pass_promtool_check_rules() {
    let out = run(promtool().args(["check", "rules"]).arg(repo().join(RULES)));
    assert!(out.status.success(), "promtool check rules {RULES} failed:\n{}", text(&out));
    let report = text(&out);
    assert!(report.contains(&format!("SUCCESS: {} rules found", ALERTS.len())), "{report}");
}

#[test]
fn the_rules_unit_tests_pass_under_promtool_test_rules() {
    // promtool reads rule_files relative to the test file.
    let out = run(promtool().args(["test", "rules"]).arg(repo().join(RULE_TESTS)));
    assert!(out.status.success(), "promtool test rules {RULE_TESTS} failed:\n{}", text(&out));
}

#[test]
fn every_dashboard_query_is_promql_promtool_accepts() {
    // Each query as a recording rule, with Grafana's variables replaced by what they
    // expand to, checked by promtool's parser.
    let rules: Vec<Value> = dashboard_exprs()
        .iter()
        .enumerate()
        .map(|(i, (title, expr))| {
            let expr = expr.replace("$__rate_interval", "5m").replace("$tenant", ".*");
            assert!(!expr.contains('$'), "{title}: a Grafana variable this test does not expand: {expr}");
            let mut rule = serde_yaml::Mapping::new();
            rule.insert("record".into(), format!("nxgate_dashboard:query_{i}").into());
            rule.insert("expr".into(), expr.into());
            Value::Mapping(rule)
        })
        .collect();
    assert!(!rules.is_empty(), "the dashboard has no query");
    let mut group = serde_yaml::Mapping::new();
    group.insert("name".into(), "dashboard".into());
    group.insert("rules".into(), Value::Sequence(rules));
    let mut file = serde_yaml::Mapping::new();
    file.insert("groups".into(), Value::Sequence(vec![Value::Mapping(group)]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yaml");
    std::fs::write(&path, serde_yaml::to_string(&Value::Mapping(file)).unwrap()).unwrap();
    let out = run(promtool().args(["check", "rules"]).arg(&path));
    assert!(out.status.success(), "a dashboard query is not valid PromQL:\n{}", text(&out));
}

// ---------------------------------------------------------------- rules

#[test]
fn the_rules_define_every_alert_with_a_severity_and_the_annotations() {
    let alerts = alerts();
    assert_eq!(
        alerts.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(ALERTS),
        "the alerts of {RULES}"
    );
    for (name, rule) in &alerts {
        let severity = rule["labels"]["severity"].as_str();
        assert!(matches!(severity, Some("critical" | "warning")), "{name}: labels.severity is {severity:?}");
        let annotations = rule["annotations"].as_mapping().unwrap_or_else(|| panic!("{name} has no annotations"));
        for key in ["summary", "description", "runbook"] {
            let value = annotations.get(key).and_then(Value::as_str).unwrap_or_default();
            assert!(!value.trim().is_empty(), "{name}: annotations.{key} is missing or empty");
        }
        assert_eq!(s(&rule["annotations"]["runbook"]), "README.md#alerts", "{name}: the runbook is the README's");
        for (key, value) in annotations {
            assert!(!s(value).contains("://"), "{name}: annotations.{} names an external host: {value:?}", s(key));
        }
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let tests = yaml(RULE_TESTS);
    let files: Vec<&str> = seq(&tests["rule_files"]).iter().map(s).collect();
    assert_eq!(files, ["nxgate-rules.yaml"], "{RULE_TESTS} tests the rules file beside it");
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    for case in seq(&tests["tests"]) {
        for check in case.get("alert_rule_test").map(seq).into_iter().flatten() {
            let name = s(&check["alertname"]).to_owned();
            match check.get("exp_alerts") {
                Some(Value::Sequence(expected)) if expected.is_empty() => quiet.insert(name),
                Some(Value::Sequence(expected)) => {
                    for alert in expected {
                        assert!(
                            alert["exp_annotations"].as_mapping().is_some_and(|m| !m.is_empty()),
                            "{name}: a firing case without exp_annotations checks less than it could"
                        );
                    }
                    fires.insert(name)
                }
                other => panic!("{name}: exp_alerts must be a list (`[]` for a quiet case), is {other:?}"),
            };
        }
    }
    let alerts = alerts();
    for name in alerts.keys() {
        assert!(fires.contains(name), "{RULE_TESTS} has no case where {name} fires");
        assert!(quiet.contains(name), "{RULE_TESTS} has no case where {name} stays quiet (exp_alerts: [])");
    }
    for name in fires.union(&quiet) {
        assert!(alerts.contains_key(name), "{RULE_TESTS} tests {name}, which {RULES} does not define");
    }
}

#[test]
fn the_prometheusrule_holds_the_rules_files_groups_exactly() {
    let rule = yaml(PROMETHEUS_RULE);
    assert_eq!(s(&rule["apiVersion"]), "monitoring.coreos.com/v1");
    assert_eq!(s(&rule["kind"]), "PrometheusRule");
    assert!(!s(&rule["metadata"]["name"]).is_empty());
    let rules = yaml(RULES);
    assert_eq!(rule["spec"]["groups"], rules["groups"], "{PROMETHEUS_RULE} spec.groups differs from {RULES} groups");
    // Only spec.groups: the Operator refuses other fields, and the rules file has no others.
    let spec: Vec<&str> = rule["spec"].as_mapping().unwrap().keys().map(s).collect();
    assert_eq!(spec, ["groups"]);
    let top: Vec<&str> = rules.as_mapping().unwrap().keys().map(s).collect();
    assert_eq!(top, ["groups"]);
}

#[test]
fn every_alert_has_a_runbook_line_in_the_docs() {
    let (rel, doc) = ("README.md", read("README.md"));
    assert!(doc.lines().any(|l| l.trim() == "## Observability"), "README.md has no Observability section");
    assert!(
        doc.lines().any(|l| matches!(l.trim(), "## Alerts" | "### Alerts" | "#### Alerts")),
        "{rel} has no `Alerts` heading for the rules' runbook anchor README.md#alerts"
    );
    for name in alerts().keys() {
        // One line: the name, what it means, `→`, what to do.
        let line = doc.lines().find(|l| l.contains(&format!("`{name}`")) && l.contains('→'));
        let line = line.unwrap_or_else(|| panic!("{rel} has no line for the alert {name} (`{name}` ... → what to do)"));
        assert!(line.len() > 120, "{rel}: the line for {name} says too little: {line}");
    }
}

// ---------------------------------------------------------------- dashboard

#[test]
fn the_dashboard_parses_and_every_panel_queries_prometheus() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 39), "schemaVersion: {}", d["schemaVersion"]);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "the dashboard has no uid");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var =
        |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no template variable `{name}`"));
    let datasource = var("datasource");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let tenant = var("tenant");
    assert_eq!(tenant["type"], "query");
    let query = tenant["query"].get("query").unwrap_or(&tenant["query"]);
    assert_eq!(query, "label_values(nxgate_requests_total, tenant)");
    assert_eq!(tenant["datasource"]["uid"], "${datasource}");

    let panels = dashboard_panels(&d);
    assert!(panels.len() >= 12, "only {} panels", panels.len());
    let mut ids = BTreeSet::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(ids.insert(p["id"].as_u64().expect("a panel id")), "two panels with id {}", p["id"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: the data source is not the variable");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: a target without an expr");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: a target's data source is not the variable");
        }
        // Per-tenant series follow the tenant selector.
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            if expr.contains("tenant)") || expr.contains("tenant,") {
                assert!(expr.contains(r#"tenant=~"$tenant""#), "{title}: a per-tenant query ignores $tenant: {expr}");
            }
        }
    }
}

#[test]
fn the_dashboard_has_a_panel_for_every_topic() {
    let d = dashboard();
    let titles: Vec<String> =
        dashboard_panels(&d).iter().map(|p| p["title"].as_str().unwrap().to_lowercase()).collect();
    // (topic, words one title must all contain)
    let topics: [(&str, &[&str]); 14] = [
        ("traffic by tenant", &["traffic", "tenant"]),
        ("errors by tenant and error kind", &["error", "kind"]),
        ("upstream latency p50/p99", &["upstream latency", "p50", "p99"]),
        ("vendor codes", &["vendor", "code"]),
        ("verification failures by reason", &["verification", "reason"]),
        ("rate-limit and back-off refusals", &["rate-limit", "back-off"]),
        ("callback outcomes", &["callback", "outcome"]),
        ("callback queue depth", &["callback", "queue depth"]),
        ("oldest waiting callback", &["oldest", "callback"]),
        ("dead letters", &["dead letter"]),
        ("callback delivery attempts by result", &["delivery attempts", "result"]),
        ("Redis health", &["redis"]),
        ("process memory", &["memory"]),
        ("open connections", &["open connections"]),
    ];
    for (topic, words) in topics {
        assert!(
            titles.iter().any(|t| words.iter().all(|w| t.contains(w))),
            "no panel for {topic} (a title with {words:?}) among {titles:?}"
        );
    }
}

// ---------------------------------------------------------------- against the gateway

#[test]
fn every_metric_the_dashboard_and_the_rules_use_is_in_a_fresh_gateways_first_scrape() {
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for (title, expr) in dashboard_exprs() {
        for name in metric_names(&expr) {
            used.entry(name).or_insert_with(|| format!("dashboard panel {title:?}"));
        }
    }
    for (alert, rule) in alerts() {
        for name in metric_names(s(&rule["expr"])) {
            used.entry(name).or_insert_with(|| format!("alert {alert}"));
        }
    }
    for must in
        ["nxgate_requests_total", "nxgate_callback_dead_letters", "nxgate_redis_up", "process_resident_memory_bytes"]
    {
        assert!(used.contains_key(must), "{must} is not found in any expression: {used:?}");
    }

    // A gateway with a callback listener and the outbox (embedded state), so the callback
    // families are those of a gateway that uses them; nothing has happened yet.
    let state = tempfile::tempdir().unwrap();
    let mut opts = GatewayOptions::new("http://127.0.0.1:9".to_owned());
    opts.extra_top = format!(
        "state:\n  kind: \"embedded\"\n  dir: \"{}\"\ncallbacks:\n  listen: [\"127.0.0.1:0\"]\n  forward_to: \"http://127.0.0.1:9/\"\n  allow_prefixes: [\"/hooks/\"]\n",
        state.path().display()
    );
    let gw = Gateway::start_yaml(&opts.yaml(any_port()));
    assert_eq!(gw.callbacks.len(), 1, "the ready file lists the callback listener");
    let scrape = String::from_utf8(gw.admin_get("/metrics").unwrap().body).unwrap();
    let types: BTreeMap<&str, &str> =
        scrape.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split_once(' ')).collect();
    let mut missing = Vec::new();
    for (name, user) in &used {
        let found = types.contains_key(name.as_str())
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| types.get(base) == Some(&"histogram")));
        if !found {
            missing.push(format!("{name} (used by the {user})"));
        }
    }
    assert!(missing.is_empty(), "not in a fresh gateway's first scrape: {missing:#?}\nscrape:\n{scrape}");
}

#[test]
fn metric_names_are_read_from_expressions_as_promql_reads_them() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(nxgate_upstream_duration_seconds_bucket{tenant=~"$tenant"}[5m])))
           / on (instance) process_resident_memory_bytes and my_nxgate_thing and up{job="nxgate"}"#,
    );
    assert_eq!(
        names,
        BTreeSet::from([
            "nxgate_upstream_duration_seconds_bucket".to_owned(),
            "process_resident_memory_bytes".to_owned()
        ])
    );
}
