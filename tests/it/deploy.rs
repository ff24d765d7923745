//! The monitoring files in deploy/ as an operator loads them: the Prometheus rules and the
//! Grafana dashboard name only metrics and labels that `/metrics` exports; every alert has a
//! `for:`, a severity, a summary, a description and a runbook link to a section of
//! docs/troubleshooting.md that exists, and is listed in docs/operations.md; the dashboard works
//! with whatever Prometheus data source it is imported against and covers every metric family.
//! (PromQL syntax, promtool's unit tests and the Kubernetes files: .ci/deploy-checks.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use scenewatch::metrics::Metrics;

fn repo_file(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Labels Prometheus adds to every scraped series (not exported by scenewatch itself).
const TARGET_LABELS: [&str; 2] = ["job", "instance"];

/// Sample names (`scenewatch_polls_total`, `…_bucket`, `process_open_fds`) with the label names
/// each carries, from the real registry after one sample of every family. A family added to
/// `Metrics` needs a line here before the dashboard or the rules can use it.
fn exported() -> BTreeMap<String, BTreeSet<String>> {
    let m = Metrics::new();
    m.poll("status", "ok", Duration::from_millis(5));
    m.poll("result", "throttled", Duration::from_millis(5));
    m.set_phase("waiting", 1);
    m.completed(Duration::from_secs(60));
    m.delivery("files", "ok", Some(Duration::from_millis(3)));
    m.set_backlog("files", 1, 0);
    m.set_sink_failing("files", false);
    m.set_budget_rate(10.0);
    m.budget_cut(5.0);
    m.set_auth_paused(false);
    m.set_quota_paused(false);
    m.unrecognised("result", Some("10042"));
    m.event("com.scenewatch.summary.completed");
    m.event_sent("events", "com.scenewatch.summary.completed");
    m.ledger_commit(Duration::from_millis(1));
    m.lease_tick(86, 3, 86, 1, 1);
    m.lease_error(86);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in m.render().lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_string()).or_default();
        if line[name_end..].starts_with('{') {
            labels.extend(matcher_labels(&line[name_end + 1..]));
        }
    }
    out
}

/// The label names of `a="x",b=~"y"}…` up to the closing brace (values skipped, escapes
/// honoured).
fn matcher_labels(s: &str) -> Vec<String> {
    let mut labels = Vec::new();
    let mut chars = s.chars().peekable();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '}' => break,
            '"' => {
                while let Some(v) = chars.next() {
                    match v {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '=' | '!' | '~' => {
                if !name.is_empty() {
                    labels.push(std::mem::take(&mut name));
                }
            }
            c if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
            _ => name.clear(),
        }
    }
    labels
}

/// Every metric-name-like token in PromQL text, with the label names of the selector that
/// follows it, if any: (token, labels).
fn referenced(promql: &str) -> Vec<(String, Vec<String>)> {
    let mut found = Vec::new();
    let bytes = promql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        let starts = (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && (i == 0 || !is_name_char(bytes[i - 1] as char) && bytes[i - 1] != b'$');
        if !starts {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_name_char(bytes[i] as char) {
            i += 1;
        }
        let token = &promql[start..i];
        let labels = if promql[i..].starts_with('{') {
            matcher_labels(&promql[i + 1..])
        } else {
            Vec::new()
        };
        found.push((token.to_string(), labels));
    }
    found
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Checks every scenewatch_*/process_* name and every recording-rule name (`a:b:c`) in
/// `promql`; returns the problems.
fn check_names(
    what: &str,
    promql: &str,
    exported: &BTreeMap<String, BTreeSet<String>>,
    recorded: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (token, labels) in referenced(promql) {
        if token.contains(':') {
            if !recorded.contains(&token) {
                problems.push(format!(
                    "{what}: {token} is no recording rule of the rules file"
                ));
            }
            continue;
        }
        if !(token.starts_with("scenewatch_") || token.starts_with("process_")) {
            continue;
        }
        let Some(known) = exported.get(&token) else {
            problems.push(format!("{what}: {token} is not exported by /metrics"));
            continue;
        };
        for l in labels {
            if !known.contains(&l) && !TARGET_LABELS.contains(&l.as_str()) {
                problems.push(format!(
                    "{what}: {token} has no label {l:?} (it has {known:?})"
                ));
            }
        }
    }
    problems
}

/// Every `expr:` of the rules file, one line or a `|` block.
fn rule_exprs(rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        if expr.trim() != "|" {
            out.push(expr.trim().to_string());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) =
            lines.next_if(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        {
            block.push_str(next.trim());
            block.push('\n');
        }
        out.push(block);
    }
    out
}

/// The `record:` names of the rules file.
fn recording_rules(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- record:"))
        .map(|n| n.trim().to_string())
        .collect()
}

/// Every PromQL query in the dashboard: panel targets and template-variable queries.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::String(e)) = m.get("expr") {
                    out.push((format!("target {}", m["refId"]), e.clone()));
                }
                for (k, child) in m {
                    if k == "templating" {
                        continue;
                    }
                    walk(child, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    walk(&dash["panels"], &mut out);
    for var in dash["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let q = var["query"]["query"].as_str().unwrap_or_default();
            out.push((format!("variable {}", var["name"]), q.to_string()));
        }
    }
    out
}

#[test]
fn rules_and_dashboard_name_only_exported_metrics_and_labels() {
    let exported = exported();
    // The registry itself exports what docs/operations.md documents (sanity for this test).
    for name in [
        "scenewatch_polls_total",
        "scenewatch_poll_duration_seconds_bucket",
        "scenewatch_build_info",
    ] {
        assert!(exported.contains_key(name), "{name}: {exported:?}");
    }
    if cfg!(target_os = "linux") {
        assert!(exported.contains_key("process_open_fds"), "{exported:?}");
    }

    let rules = repo_file("deploy/prometheus/scenewatch.rules.yml");
    let recorded = recording_rules(&rules);
    assert!(recorded.len() >= 5, "{recorded:?}");
    let exprs = rule_exprs(&rules);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let mut problems = Vec::new();
    for e in &exprs {
        problems.extend(check_names(
            &format!("scenewatch.rules.yml {e:?}"),
            e,
            &exported,
            &recorded,
        ));
    }

    let dash: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/scenewatch.json")).unwrap();
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 20, "{queries:?}");
    // The dashboard must work without the recording rules loaded.
    for (where_, q) in &queries {
        problems.extend(check_names(
            &format!("scenewatch.json {where_}"),
            q,
            &exported,
            &BTreeSet::new(),
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Every family is on the dashboard: a new metric gets a panel (or a reason here).
    let all_queries: String = queries.iter().map(|(_, q)| q.as_str()).collect();
    let on_dashboard: BTreeSet<String> = referenced(&all_queries)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    for name in exported.keys() {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        let shown = on_dashboard
            .iter()
            .any(|t| t == name || t.strip_suffix("_bucket") == Some(family));
        assert!(shown, "{name} is on no dashboard panel");
    }
}

#[test]
fn the_dashboard_takes_its_data_source_from_a_variable_and_its_panels_do_not_overlap() {
    let dash: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/scenewatch.json")).unwrap();
    let schema = dash["schemaVersion"].as_u64().unwrap();
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dash["id"].is_null(), "an exported id would clash on import");
    let vars = dash["templating"]["list"].as_array().unwrap();
    assert!(
        vars.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus data source variable: {vars:?}"
    );

    // Every data source reference, in panels, targets and variables, is the variable: no uid
    // of the machine it was made on.
    fn datasources(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(ds) = m.get("datasource") {
                    out.push(ds.clone());
                }
                m.values().for_each(|c| datasources(c, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| datasources(c, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    datasources(&dash, &mut refs);
    assert!(refs.len() > 20, "{refs:?}");
    for r in &refs {
        assert_eq!(r["uid"], "${datasource}", "{r}");
        assert_eq!(r["type"], "prometheus", "{r}");
    }

    // Unique ids; every panel has a title, a description and queries; no two overlap on the
    // 24-column grid.
    let panels = dash["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeMap::new();
    for p in panels {
        let id = p["id"].as_u64().unwrap();
        assert!(ids.insert(id), "panel id {id} twice");
        let title = p["title"].as_str().unwrap();
        assert!(!title.is_empty());
        if p["type"] != "row" {
            assert!(
                p["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{title}: no description"
            );
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{title}: no query");
        }
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24 && w > 0 && h > 0, "{title}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                if let Some(other) = cells.insert((cx, cy), title) {
                    panic!("{title} overlaps {other} at ({cx}, {cy})");
                }
            }
        }
    }
}

/// GitHub's anchor for a Markdown heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_is_complete_documented_and_links_to_a_runbook_section_that_exists() {
    let rules = repo_file("deploy/prometheus/scenewatch.rules.yml");
    let troubleshooting = repo_file("docs/troubleshooting.md");
    let anchors: BTreeSet<String> = troubleshooting
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#')))
        .collect();
    let operations = repo_file("docs/operations.md");

    let mut alerts = Vec::new();
    for block in rules.split("\n      - ").skip(1) {
        let Some(name) = block.strip_prefix("alert: ") else {
            continue;
        };
        let name = name.lines().next().unwrap().trim();
        alerts.push(name.to_string());
        for needle in [
            "\n        for: ",
            "\n          severity: ",
            "\n          summary: ",
            "\n          description: ",
        ] {
            assert!(block.contains(needle), "{name} lacks {needle:?}");
        }
        let severity = block
            .split("severity: ")
            .nth(1)
            .and_then(|s| s.lines().next())
            .unwrap();
        assert!(
            ["critical", "warning", "info"].contains(&severity),
            "{name}: severity {severity}"
        );
        let link = block
            .split("runbook_url: ")
            .nth(1)
            .and_then(|s| s.lines().next())
            .unwrap_or_else(|| panic!("{name} has no runbook_url"));
        let anchor = link
            .strip_prefix("docs/troubleshooting.md#")
            .unwrap_or_else(|| panic!("{name}: {link} is not a docs/troubleshooting.md section"));
        assert!(
            anchors.contains(anchor),
            "{name}: docs/troubleshooting.md has no section #{anchor} (has {anchors:?})"
        );
        assert!(
            operations.contains(&format!("`{name}`")),
            "{name} is not listed in docs/operations.md"
        );
    }
    assert!(alerts.len() >= 10, "{alerts:?}");
    // And the other way round: docs/operations.md lists no alert the rules lack.
    for line in operations.lines() {
        if let Some(rest) = line.strip_prefix("| `Scenewatch") {
            let name = format!("Scenewatch{}", rest.split('`').next().unwrap());
            assert!(
                alerts.contains(&name),
                "docs/operations.md lists {name}, the rules do not"
            );
        }
    }
}
