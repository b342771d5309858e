//! The deployment template (`infra/aws/template.yaml`) matches the table definitions in
//! `edge_documents::tables`, the one source of truth: same names, keys, attribute types,
//! indexes, streams and billing mode, and no table the code does not know except the
//! replication ledger. The writer's table variables and the consumer's streams point at the
//! right tables. The roles grant exactly the DynamoDB, DynamoDB Streams and CloudFront calls
//! found in each binary's sources, on the right resources (see [`CALLS`]). The writer's
//! heartbeat alarms treat a silent writer as breaching, and the core API may reach /v1/sync.
//! The dashboards show only published metrics and every alarm, and every alarm links to its
//! runbook section.
//!
//! The YAML is read by cfn-lint's own decoder (it understands `!Sub`, `!GetAtt`, ...), run
//! with the Python of the infra venv that `infra/aws/lint.sh` installs
//! (`.local/venv-infra/bin/python`, or `EDGE_INFRA_PYTHON`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use edge_documents::tables::{AttrType, TableKind, TableNames};
use serde_json::Value;

const ACKS_TABLE: &str = "flagsmith_edge_replication_acks";

fn template_path() -> PathBuf {
    edge_tests::repo_root().join("infra/aws/template.yaml")
}

fn infra_python() -> PathBuf {
    if let Some(python) = std::env::var_os("EDGE_INFRA_PYTHON") {
        return PathBuf::from(python);
    }
    let python = edge_tests::repo_root().join(".local/venv-infra/bin/python");
    assert!(
        python.exists(),
        "{} not found: run infra/aws/lint.sh once (it installs cfn-lint into .local/venv-infra), \
         or set EDGE_INFRA_PYTHON to a Python that has cfn-lint",
        python.display()
    );
    python
}

/// The template as JSON, intrinsic functions in their long form (`{"Fn::Sub": ...}`).
fn template() -> &'static Value {
    static TEMPLATE: OnceLock<Value> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        const DECODE: &str = "import json, sys\n\
            from cfnlint.decode import decode\n\
            template, matches = decode(sys.argv[1])\n\
            if matches or template is None:\n\
            \x20   sys.exit('cannot parse ' + sys.argv[1] + ': ' + '; '.join(str(m) for m in matches))\n\
            json.dump(template, sys.stdout)\n";
        let python = infra_python();
        let out = Command::new(&python)
            .arg("-c")
            .arg(DECODE)
            .arg(template_path())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running {}: {e}; run infra/aws/lint.sh to (re)create the venv",
                    python.display()
                )
            });
        assert!(
            out.status.success(),
            "decoding the template with {} failed (run infra/aws/lint.sh if cfn-lint is missing): {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the decoder prints JSON")
    })
}

fn resources() -> &'static serde_json::Map<String, Value> {
    template()["Resources"]
        .as_object()
        .expect("the template has Resources")
}

/// Every DynamoDB table of the template by its name without `${TablePrefix}`, with its
/// logical id.
fn tables() -> BTreeMap<String, (&'static str, &'static Value)> {
    let mut tables = BTreeMap::new();
    for (id, resource) in resources() {
        let kind = resource["Type"].as_str().unwrap_or_default();
        if !matches!(kind, "AWS::DynamoDB::GlobalTable" | "AWS::DynamoDB::Table") {
            continue;
        }
        let props = &resource["Properties"];
        let name = props["TableName"]["Fn::Sub"].as_str().unwrap_or_else(|| {
            panic!(
                "{id}: TableName must be !Sub \"${{TablePrefix}}<name>\", found {}",
                props["TableName"]
            )
        });
        let suffix = name.strip_prefix("${TablePrefix}").unwrap_or_else(|| {
            panic!("{id}: TableName {name:?} does not start with ${{TablePrefix}}")
        });
        let previous = tables.insert(suffix.to_string(), (id.as_str(), props));
        assert!(previous.is_none(), "two tables are named {suffix}");
    }
    tables
}

fn attr_type(t: AttrType) -> &'static str {
    match t {
        AttrType::S => "S",
        AttrType::N => "N",
    }
}

/// `[(name, HASH|RANGE)]` of a KeySchema.
fn key_schema(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("KeySchema is a list: {value}"))
        .iter()
        .map(|k| {
            (
                k["AttributeName"]
                    .as_str()
                    .expect("AttributeName")
                    .to_string(),
                k["KeyType"].as_str().expect("KeyType").to_string(),
            )
        })
        .collect()
}

fn expected_keys(hash: (&str, AttrType), range: Option<(&str, AttrType)>) -> Vec<(String, String)> {
    let mut keys = vec![(hash.0.to_string(), "HASH".to_string())];
    if let Some((range, _)) = range {
        keys.push((range.to_string(), "RANGE".to_string()));
    }
    keys
}

#[test]
fn every_table_of_the_code_is_in_the_template_with_the_same_keys_and_indexes() {
    let defaults = TableNames::default();
    let tables = tables();
    for kind in TableKind::ALL {
        let name = defaults.name(kind);
        let Some((id, props)) = tables.get(name) else {
            panic!("the template has no table {name} (TableKind::{kind:?})");
        };
        let def = kind.definition();

        assert_eq!(
            props["BillingMode"], "PAY_PER_REQUEST",
            "{id} ({name}): billing mode"
        );
        assert_eq!(
            props["StreamSpecification"]["StreamViewType"], "NEW_AND_OLD_IMAGES",
            "{id} ({name}): the stream consumer needs both images"
        );
        assert_eq!(
            key_schema(&props["KeySchema"]),
            expected_keys(def.hash_key, def.range_key),
            "{id} ({name}): key schema"
        );

        // Attribute definitions: exactly the key attributes of the table and its indexes.
        let mut expected_attrs = BTreeMap::new();
        let mut add = |(n, t): (&str, AttrType)| {
            if let Some(previous) = expected_attrs.insert(n.to_string(), attr_type(t).to_string()) {
                assert_eq!(previous, attr_type(t), "{n} has two types in the code");
            }
        };
        add(def.hash_key);
        def.range_key.into_iter().for_each(&mut add);
        for index in &def.indexes {
            add(index.hash_key);
            index.range_key.into_iter().for_each(&mut add);
        }
        let mut actual_attrs = BTreeMap::new();
        for a in props["AttributeDefinitions"]
            .as_array()
            .unwrap_or_else(|| panic!("{id}: AttributeDefinitions is a list"))
        {
            let previous = actual_attrs.insert(
                a["AttributeName"]
                    .as_str()
                    .expect("AttributeName")
                    .to_string(),
                a["AttributeType"]
                    .as_str()
                    .expect("AttributeType")
                    .to_string(),
            );
            assert!(previous.is_none(), "{id}: {a} is defined twice");
        }
        assert_eq!(
            actual_attrs, expected_attrs,
            "{id} ({name}): attribute definitions"
        );

        // Global secondary indexes, every one projecting ALL.
        let actual_indexes: BTreeMap<String, Vec<(String, String)>> = props
            .get("GlobalSecondaryIndexes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|index| {
                let index_name = index["IndexName"].as_str().expect("IndexName").to_string();
                assert_eq!(
                    index["Projection"]["ProjectionType"], "ALL",
                    "{id} ({name}): index {index_name} must project ALL"
                );
                (index_name, key_schema(&index["KeySchema"]))
            })
            .collect();
        let expected_indexes: BTreeMap<String, Vec<(String, String)>> = def
            .indexes
            .iter()
            .map(|i| (i.name.to_string(), expected_keys(i.hash_key, i.range_key)))
            .collect();
        assert_eq!(
            actual_indexes, expected_indexes,
            "{id} ({name}): global secondary indexes"
        );
        assert!(
            props.get("LocalSecondaryIndexes").is_none(),
            "{id} ({name}): the code defines no local secondary index"
        );
    }
}

#[test]
fn the_template_has_no_table_the_code_does_not_know() {
    let defaults = TableNames::default();
    for (suffix, (id, _)) in tables() {
        assert!(
            suffix == ACKS_TABLE || defaults.kind_of(&suffix).is_some(),
            "{id}: table {suffix} is not in edge_documents::tables (add it there first)"
        );
    }
}

#[test]
fn the_acknowledgement_table_is_keyed_by_item_and_region_and_expires() {
    let tables = tables();
    let Some((id, props)) = tables.get(ACKS_TABLE) else {
        panic!("the template has no table {ACKS_TABLE}");
    };
    assert_eq!(props["BillingMode"], "PAY_PER_REQUEST", "{id}");
    assert_eq!(
        key_schema(&props["KeySchema"]),
        vec![
            ("item_key".to_string(), "HASH".to_string()),
            ("region".to_string(), "RANGE".to_string())
        ],
        "{id}: key schema"
    );
    let types: BTreeSet<(String, String)> = props["AttributeDefinitions"]
        .as_array()
        .expect("AttributeDefinitions")
        .iter()
        .map(|a| {
            (
                a["AttributeName"].as_str().unwrap_or_default().to_string(),
                a["AttributeType"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        types,
        BTreeSet::from([
            ("item_key".to_string(), "S".to_string()),
            ("region".to_string(), "S".to_string())
        ]),
        "{id}: attribute definitions"
    );
    assert_eq!(
        props["TimeToLiveSpecification"]["AttributeName"], "expires_at",
        "{id}"
    );
    assert_eq!(props["TimeToLiveSpecification"]["Enabled"], true, "{id}");
}

#[test]
fn table_prefix_defaults_to_flagsmiths_names() {
    assert_eq!(
        template()["Parameters"]["TablePrefix"]["Default"],
        "",
        "with no prefix the tables carry Flagsmith's default names"
    );
}

/// The writer's variable for each table (writer/src/main.rs, `TableArgs`).
fn writer_variable(kind: TableKind) -> &'static str {
    match kind {
        TableKind::Environments => "EDGE_ENVIRONMENTS_TABLE",
        TableKind::EnvironmentsV2 => "EDGE_ENVIRONMENTS_V2_TABLE",
        TableKind::Identities => "EDGE_IDENTITIES_TABLE",
        TableKind::EnvironmentApiKeys => "EDGE_ENVIRONMENT_API_KEYS_TABLE",
        TableKind::ProjectMetadata => "EDGE_PROJECT_METADATA_TABLE",
    }
}

/// The kind of the table a logical id names.
fn kind_of_resource(id: &str) -> Option<TableKind> {
    let defaults = TableNames::default();
    tables()
        .into_iter()
        .find(|(_, (table_id, _))| *table_id == id)
        .and_then(|(suffix, _)| defaults.kind_of(&suffix))
}

/// The writer service's task definition (the migrate task is another).
fn writer_task() -> &'static Value {
    resources()
        .get("WriterTaskDefinition")
        .expect("the writer's task definition")
}

fn container_environment(task: &Value) -> BTreeMap<&str, &Value> {
    task["Properties"]["ContainerDefinitions"][0]["Environment"]
        .as_array()
        .expect("Environment")
        .iter()
        .map(|v| (v["Name"].as_str().expect("Name"), &v["Value"]))
        .collect()
}

/// Migrations are a one-off task run as the role that owns the core tables, granting the
/// other roles; the long-running service does not migrate. Both verify the database's
/// certificate (verify-full with the RDS CA bundle of the image).
#[test]
fn migrations_are_a_one_off_task_and_the_service_does_not_migrate() {
    let service = &writer_task()["Properties"]["ContainerDefinitions"][0];
    let command: Vec<&str> = service["Command"]
        .as_array()
        .expect("the service's command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(command.first(), Some(&"run"));
    assert!(!command.contains(&"--migrate"), "{command:?}");

    let migrate = resources()
        .get("WriterMigrateTaskDefinition")
        .expect("the migrate task definition");
    let container = &migrate["Properties"]["ContainerDefinitions"][0];
    let text = container["Command"].to_string();
    for part in [
        "migrate",
        "--core-role=${CoreDatabaseRole}",
        "--writer-role=${WriterDatabaseRole}",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    let secret = container["Secrets"][0]["ValueFrom"].to_string();
    assert!(secret.contains("MigrationDatabaseSecretArn"), "{secret}");
    assert!(
        template()["Outputs"]["WriterMigrateTaskDefinitionArn"].is_object(),
        "the task is an output"
    );

    for task in [writer_task(), migrate] {
        let env = container_environment(task);
        assert_eq!(env["PGSSLMODE"]["Ref"], "DatabaseSslMode");
        assert_eq!(env["PGSSLROOTCERT"], "/etc/ssl/certs/rds-global-bundle.pem");
    }
    assert_eq!(
        template()["Parameters"]["DatabaseSslMode"]["Default"],
        "verify-full"
    );
    let dockerfile = std::fs::read_to_string(template_path().with_file_name("Dockerfile"))
        .expect("infra/aws/Dockerfile");
    assert!(dockerfile.contains("/etc/ssl/certs/rds-global-bundle.pem"));
    assert!(
        !dockerfile.contains("--migrate"),
        "the image's default command does not migrate"
    );
}

#[test]
fn the_writer_gets_every_table_under_its_own_variable() {
    let task = writer_task();
    let container = &task["Properties"]["ContainerDefinitions"][0];
    let environment: BTreeMap<&str, &Value> = container["Environment"]
        .as_array()
        .expect("Environment")
        .iter()
        .map(|v| (v["Name"].as_str().expect("Name"), &v["Value"]))
        .collect();
    for kind in TableKind::ALL {
        let variable = writer_variable(kind);
        let value = environment
            .get(variable)
            .unwrap_or_else(|| panic!("the writer's container has no {variable}"));
        let target = value["Ref"]
            .as_str()
            .unwrap_or_else(|| panic!("{variable} must be !Ref <table>, found {value}"));
        assert_eq!(
            kind_of_resource(target),
            Some(kind),
            "{variable} refers to {target}"
        );
    }
    let acks_id = acks_table_id();
    assert_eq!(
        environment.get("EDGE_ACK_TABLE").map(|v| &v["Ref"]),
        Some(&Value::from(acks_id)),
        "the writer's EDGE_ACK_TABLE must be !Ref {acks_id} (delete intents, verify)"
    );
    let secrets = container["Secrets"].as_array().expect("Secrets");
    assert!(
        secrets.iter().any(|s| s["Name"] == "DATABASE_URL"),
        "DATABASE_URL comes from Secrets Manager"
    );
}

/// The logical id of the replication ledger table.
fn acks_table_id() -> &'static str {
    tables()
        .get(ACKS_TABLE)
        .unwrap_or_else(|| panic!("the template has no table {ACKS_TABLE}"))
        .0
}

fn writer_task_role(task: &Value) -> &str {
    task["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0]
        .as_str()
        .expect("TaskRoleArn is !GetAtt <role>.Arn")
}

/// Every statement of a role's inline policies (those under `!If` too, either branch).
fn role_statements(role: &str) -> Vec<Value> {
    let mut statements = Vec::new();
    for policy in resources()[role]["Properties"]["Policies"]
        .as_array()
        .unwrap_or_else(|| panic!("{role}: Policies"))
    {
        let branches = match policy.get("Fn::If").and_then(Value::as_array) {
            Some(b) => b[1..].to_vec(),
            None => vec![policy.clone()],
        };
        for branch in branches {
            if let Some(list) = branch["PolicyDocument"]["Statement"].as_array() {
                statements.extend(list.iter().cloned());
            }
        }
    }
    statements
}

fn actions<'a>(role: &str, statement: &'a Value) -> Vec<&'a str> {
    match &statement["Action"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        other => panic!("{role}: Action {other}"),
    }
}

fn statement_resources(statement: &Value) -> Vec<&Value> {
    match &statement["Resource"] {
        Value::Array(list) => list.iter().collect(),
        one => vec![one],
    }
}

/// The tables the consumer verifies (those with an event source mapping), which
/// `writer verify` scans in every region.
const STREAMED: [TableKind; 4] = [
    TableKind::Environments,
    TableKind::EnvironmentsV2,
    TableKind::Identities,
    TableKind::EnvironmentApiKeys,
];

#[test]
fn the_consumer_acknowledges_into_the_ledger() {
    let function = resources()
        .values()
        .find(|r| r["Type"] == "AWS::Serverless::Function")
        .expect("the stream consumer");
    let variables = &function["Properties"]["Environment"]["Variables"];
    assert_eq!(
        variables["EDGE_ACK_TABLE"]["Fn::Sub"],
        format!("${{TablePrefix}}{ACKS_TABLE}"),
        "the consumer's EDGE_ACK_TABLE"
    );
}

#[test]
fn the_consumer_reads_the_streams_of_the_tables_it_verifies() {
    let streamed: BTreeSet<TableKind> = resources()
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Lambda::EventSourceMapping")
        .map(|(id, r)| {
            let props = &r["Properties"];
            assert_eq!(props["StartingPosition"], "LATEST", "{id}");
            assert_eq!(props["BisectBatchOnFunctionError"], true, "{id}");
            assert_eq!(
                props["FunctionResponseTypes"],
                serde_json::json!(["ReportBatchItemFailures"]),
                "{id}"
            );
            assert!(
                props["DestinationConfig"]["OnFailure"]["Destination"].is_object(),
                "{id}: on-failure destination"
            );
            // !If [Use<X>StreamArn, !Ref <X>StreamArn, !GetAtt <Table>.StreamArn]
            let branches = props["EventSourceArn"]["Fn::If"]
                .as_array()
                .unwrap_or_else(|| panic!("{id}: EventSourceArn is !If [..]"));
            let table = branches[2]["Fn::GetAtt"][0]
                .as_str()
                .unwrap_or_else(|| panic!("{id}: primary branch is !GetAtt <table>.StreamArn"));
            assert_eq!(branches[2]["Fn::GetAtt"][1], "StreamArn", "{id}");
            kind_of_resource(table).unwrap_or_else(|| panic!("{id}: {table} is no edge table"))
        })
        .collect();
    assert_eq!(
        streamed,
        BTreeSet::from(STREAMED),
        "the consumer's event source mappings"
    );
}

/// The metric names of the consumer's embedded metrics (`stream_consumer::metrics::emf`),
/// published with and without dimension `Region`.
fn emf_metric_names() -> BTreeSet<String> {
    let emf = stream_consumer::metrics::emf("r", &stream_consumer::BatchReport::default(), 0);
    emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap().to_string())
        .collect()
}

/// The `FlagsmithEdge` metrics the template's log metric filters publish (without
/// dimensions), each checked to match a line and a field the writer logs.
fn filtered_metric_names() -> BTreeSet<String> {
    let daemon = std::fs::read_to_string(edge_tests::repo_root().join("writer/src/daemon.rs"))
        .expect("read the writer's daemon");
    let mut filtered = BTreeSet::new();
    for (id, r) in resources() {
        if r["Type"] != "AWS::Logs::MetricFilter" {
            continue;
        }
        let pattern = r["Properties"]["FilterPattern"].as_str().unwrap();
        let message = pattern
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("{id}: pattern {pattern} names no message"));
        assert!(
            daemon.contains(&format!("\"{message}\"")),
            "{id} matches log lines `{message}` that writer/src/daemon.rs does not write"
        );
        for t in r["Properties"]["MetricTransformations"].as_array().unwrap() {
            let field = t["MetricValue"].as_str().unwrap();
            let field = field.trim_start_matches("$.fields.");
            assert!(
                daemon.contains(&format!("{field} = ")),
                "{id}: the writer's line carries no field {field}"
            );
            filtered.insert(t["MetricName"].as_str().unwrap().to_string());
        }
    }
    filtered
}

/// Every alarm on a `FlagsmithEdge` metric watches something that is published: by the
/// consumer's embedded metrics (the names of `stream_consumer::metrics::emf`) or by a log
/// metric filter of the template whose pattern matches a line the writer logs.
#[test]
fn every_edge_alarm_watches_a_metric_something_publishes() {
    let emf_names = emf_metric_names();
    let filtered = filtered_metric_names();
    let mut watched = 0;
    for (id, r) in resources() {
        if r["Type"] != "AWS::CloudWatch::Alarm" || r["Properties"]["Namespace"] != "FlagsmithEdge"
        {
            continue;
        }
        watched += 1;
        let name = r["Properties"]["MetricName"].as_str().unwrap();
        assert!(
            emf_names.contains(name) || filtered.contains(name),
            "alarm {id} watches FlagsmithEdge/{name}, which nothing publishes \
             (consumer EMF: {emf_names:?}; log filters: {filtered:?})"
        );
    }
    assert!(watched >= 3, "the edge alarms are found ({watched})");
}

/// The AWS metrics a dashboard may show besides `FlagsmithEdge`'s: what AWS publishes for the
/// resources of the template.
const AWS_METRICS: &[(&str, &[&str])] = &[
    (
        "AWS/Lambda",
        &["IteratorAge", "Errors", "Invocations", "Throttles"],
    ),
    ("AWS/SQS", &["ApproximateNumberOfMessagesVisible"]),
    (
        "ECS/ContainerInsights",
        &["RunningTaskCount", "CpuUtilized", "MemoryUtilized"],
    ),
];

/// A dashboard of the template: its condition, its body as JSON (`${X.Arn}` of an alarm read
/// as `ALARM:X`, every other substitution as its name) and the alarms its body references
/// only under a condition (`Fn::If` in the `Fn::Sub` variables), with that condition.
struct Dashboard {
    condition: Option<String>,
    body: Value,
    conditional_alarms: BTreeMap<String, String>,
}

fn substitute(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closed ${...}") + start;
        let name = &rest[start + 2..end];
        match name.strip_suffix(".Arn") {
            Some(alarm) if alarm.ends_with("Alarm") => out.push_str(&format!("ALARM:{alarm}")),
            _ => out.push_str(name),
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn dashboards() -> BTreeMap<String, Dashboard> {
    let mut out = BTreeMap::new();
    for (id, r) in resources() {
        if r["Type"] != "AWS::CloudWatch::Dashboard" {
            continue;
        }
        let sub = &r["Properties"]["DashboardBody"]["Fn::Sub"];
        let (text, vars) = match sub {
            Value::String(text) => (text.as_str(), None),
            Value::Array(parts) => (parts[0].as_str().unwrap(), parts[1].as_object()),
            other => panic!("{id}: DashboardBody is not a Fn::Sub: {other}"),
        };
        let mut text = text.to_string();
        let mut conditional_alarms = BTreeMap::new();
        for (var, value) in vars.into_iter().flatten() {
            // { "Fn::If": [condition, { "Fn::Sub": "\"${X.Arn}\"," }, ""] }
            let branches = value["Fn::If"]
                .as_array()
                .unwrap_or_else(|| panic!("{id}: variable {var} is not a Fn::If"));
            let condition = branches[0].as_str().unwrap().to_string();
            let when = substitute(branches[1]["Fn::Sub"].as_str().unwrap());
            assert_eq!(branches[2], "", "{id}: {var} is empty otherwise");
            let alarm = when
                .split("ALARM:")
                .nth(1)
                .and_then(|a| a.split('"').next())
                .unwrap_or_else(|| panic!("{id}: {var} names no alarm"));
            conditional_alarms.insert(alarm.to_string(), condition);
            text = text.replace(&format!("${{{var}}}"), &when);
        }
        let body: Value = serde_json::from_str(&substitute(&text))
            .unwrap_or_else(|e| panic!("{id}: DashboardBody is not JSON: {e}"));
        out.insert(
            id.clone(),
            Dashboard {
                condition: r["Condition"].as_str().map(str::to_string),
                body,
                conditional_alarms,
            },
        );
    }
    out
}

/// (namespace, metric name, dimension names) of every metric a dashboard shows.
fn dashboard_metrics(body: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for w in body["widgets"].as_array().expect("widgets") {
        if w["type"] != "metric" {
            continue;
        }
        for m in w["properties"]["metrics"].as_array().expect("metrics") {
            let parts: Vec<&Value> = m.as_array().unwrap().iter().collect();
            let strings: Vec<String> = parts
                .iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            assert!(strings.len() >= 2, "a metric is namespace and name: {m}");
            assert!(
                strings[0] != "." && strings[1] != ".",
                "no shorthand in metrics: {m}"
            );
            let dims = strings[2..].iter().step_by(2).cloned().collect();
            out.push((strings[0].clone(), strings[1].clone(), dims));
        }
    }
    out
}

fn dashboard_alarms(body: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for w in body["widgets"].as_array().expect("widgets") {
        if w["type"] != "alarm" {
            continue;
        }
        for a in w["properties"]["alarms"].as_array().expect("alarms") {
            let a = a.as_str().unwrap();
            let id = a
                .strip_prefix("ALARM:")
                .unwrap_or_else(|| panic!("alarm {a} is not an alarm of the template"));
            out.insert(id.to_string());
        }
    }
    out
}

/// Every metric a dashboard shows is one the code publishes (or AWS does, for the template's
/// resources), with the dimensions it is published with; every alarm is on a dashboard that
/// exists whenever the alarm does, beside the metric it watches.
#[test]
fn dashboards_show_published_metrics_and_every_alarm() {
    let emf = emf_metric_names();
    let filtered = filtered_metric_names();
    let dashboards = dashboards();
    assert!(
        dashboards.len() >= 2,
        "a consumer and a writer dashboard: {:?}",
        dashboards.keys().collect::<Vec<_>>()
    );
    let mut shown_alarms: BTreeMap<String, String> = BTreeMap::new();
    for (id, d) in &dashboards {
        let metrics = dashboard_metrics(&d.body);
        assert!(!metrics.is_empty(), "{id} shows no metric");
        for (namespace, name, dims) in &metrics {
            if namespace == "FlagsmithEdge" {
                if emf.contains(name) {
                    assert!(
                        dims.is_empty() || dims == &["Region".to_string()],
                        "{id}: {name} is published without dimensions and by Region, not {dims:?}"
                    );
                } else {
                    assert!(
                        filtered.contains(name),
                        "{id} shows FlagsmithEdge/{name}, which nothing publishes \
                         (consumer EMF: {emf:?}; log filters: {filtered:?})"
                    );
                    assert!(
                        dims.is_empty(),
                        "{id}: {name} comes from a log filter, without dimensions"
                    );
                }
            } else {
                let known = AWS_METRICS
                    .iter()
                    .find(|(ns, _)| ns == namespace)
                    .is_some_and(|(_, names)| names.contains(&name.as_str()));
                assert!(
                    known,
                    "{id} shows {namespace}/{name}, not a metric of this stack"
                );
            }
        }
        for alarm in dashboard_alarms(&d.body) {
            let r = resources()
                .get(&alarm)
                .unwrap_or_else(|| panic!("{id} shows alarm {alarm}, not in the template"));
            assert_eq!(r["Type"], "AWS::CloudWatch::Alarm", "{alarm}");
            let alarm_condition = r["Condition"].as_str();
            // Referenced only when the alarm exists: under the dashboard's own condition,
            // or under the alarm's through Fn::If.
            if let Some(c) = alarm_condition {
                let guarded = d.condition.as_deref() == Some(c)
                    || d.conditional_alarms.get(&alarm).map(String::as_str) == Some(c);
                assert!(guarded, "{id} references {alarm} outside its condition {c}");
            }
            let watched = (
                r["Properties"]["Namespace"].as_str().unwrap().to_string(),
                r["Properties"]["MetricName"].as_str().unwrap().to_string(),
            );
            assert!(
                metrics
                    .iter()
                    .any(|(ns, name, _)| (ns.clone(), name.clone()) == watched),
                "{id} shows alarm {alarm} but not its metric {watched:?}"
            );
            shown_alarms.insert(alarm, id.clone());
        }
    }
    for (id, r) in resources() {
        if r["Type"] == "AWS::CloudWatch::Alarm" {
            assert!(
                shown_alarms.contains_key(id),
                "alarm {id} is on no dashboard ({shown_alarms:?})"
            );
        }
    }
}

/// Every alarm's description links to its section of `infra/aws/RUNBOOK.md`, which says what
/// it means, how to confirm it and the fix; the runbook has no section for an alarm that is
/// gone.
#[test]
fn every_alarm_links_to_its_runbook_section() {
    let runbook = std::fs::read_to_string(edge_tests::repo_root().join("infra/aws/RUNBOOK.md"))
        .expect("read infra/aws/RUNBOOK.md");
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    for part in runbook.split("\n## ").skip(1) {
        let (heading, body) = part.split_once('\n').unwrap_or((part, ""));
        sections.insert(heading.trim().to_string(), body.to_string());
    }
    let mut alarms = BTreeSet::new();
    for (id, r) in resources() {
        if r["Type"] != "AWS::CloudWatch::Alarm" {
            continue;
        }
        alarms.insert(id.clone());
        let description = r["Properties"]["AlarmDescription"].as_str().unwrap();
        assert!(
            description.len() <= 1024,
            "{id}: AlarmDescription is {} characters; CloudWatch takes 1024",
            description.len()
        );
        let link = format!("Runbook: infra/aws/RUNBOOK.md#{}", id.to_lowercase());
        assert!(
            description.contains(&link),
            "{id}: its description does not link `{link}`"
        );
        let section = sections
            .get(id)
            .unwrap_or_else(|| panic!("RUNBOOK.md has no section `## {id}`"));
        for part in ["**Means:**", "**Confirm:**", "**Fix:**"] {
            assert!(section.contains(part), "RUNBOOK.md, {id}: no {part}");
        }
    }
    for heading in sections.keys() {
        assert!(
            alarms.contains(heading),
            "RUNBOOK.md has a section for {heading}, which is not an alarm of the template"
        );
    }
}

/// The Grafana dashboard of the writer's Prometheus metrics shows only metrics the writer
/// publishes (`writer/src/metrics.rs`; a histogram as its `_bucket`, `_sum` or `_count`
/// series), and every one of them.
#[test]
fn the_grafana_dashboard_shows_every_writer_metric_and_nothing_else() {
    let root = edge_tests::repo_root();
    let source = std::fs::read_to_string(root.join("writer/src/metrics.rs")).unwrap();
    let published: BTreeSet<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("writer_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect();
    assert!(published.len() >= 15, "the writer's metrics: {published:?}");
    let path = root.join("infra/grafana/writer-dashboard.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut shown = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("writer_") {
                    continue;
                }
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        word.strip_suffix(suffix)
                            .filter(|base| published.contains(*base))
                    })
                    .unwrap_or(word);
                assert!(
                    published.contains(name),
                    "panel `{}` queries {word}, which the writer does not publish",
                    panel["title"]
                );
                shown.insert(name.to_string());
            }
        }
    }
    let missing: Vec<_> = published.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "writer metrics on no panel: {missing:?}"
    );
}

/// The webhook secret by ARN: the consumer gets the variable and may read that one secret,
/// both only when the parameter is given; it may read no other secret.
#[test]
fn the_consumer_may_read_the_webhook_secret_it_is_given_and_no_other() {
    let function = resources()
        .values()
        .find(|r| r["Type"] == "AWS::Serverless::Function")
        .expect("the stream consumer");
    let role = function["Properties"]["Role"]["Fn::GetAtt"][0]
        .as_str()
        .expect("Role is !GetAtt <role>.Arn");
    let variables = &function["Properties"]["Environment"]["Variables"];
    assert_eq!(
        variables["EDGE_INVALIDATE_WEBHOOK_SECRET_ARN"],
        serde_json::json!({"Fn::If": ["HasWebhookSecretArn",
            {"Ref": "InvalidationWebhookSecretArn"}, {"Ref": "AWS::NoValue"}]}),
        "the consumer's EDGE_INVALIDATE_WEBHOOK_SECRET_ARN"
    );
    let mut grants = Vec::new();
    for policy in resources()[role]["Properties"]["Policies"]
        .as_array()
        .unwrap()
    {
        let (condition, branch) = match policy.get("Fn::If").and_then(Value::as_array) {
            Some(b) => (b[0].as_str(), &b[1]),
            None => (None, policy),
        };
        for statement in branch["PolicyDocument"]["Statement"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if actions(role, statement)
                .iter()
                .any(|a| a.starts_with("secretsmanager:"))
            {
                grants.push((condition, statement.clone()));
            }
        }
    }
    assert_eq!(
        grants.len(),
        1,
        "{role}: one Secrets Manager grant: {grants:?}"
    );
    let (condition, statement) = &grants[0];
    assert_eq!(
        *condition,
        Some("HasWebhookSecretArn"),
        "only with the parameter"
    );
    assert_eq!(
        actions(role, statement),
        vec!["secretsmanager:GetSecretValue"]
    );
    assert_eq!(
        statement["Resource"],
        serde_json::json!({"Ref": "InvalidationWebhookSecretArn"}),
        "that secret only"
    );
}

// ------------------------------------------------------------------ IAM, derived from the code

/// What an AWS call of a binary is made on, as the template names it.
#[derive(Debug, Clone, Copy)]
enum On {
    /// Every edge table of this stack (`!GetAtt <Table>.Arn`), in the home region.
    HomeTables,
    /// The replication ledger of this stack (`!GetAtt AcksTable.Arn`), in the home region.
    HomeLedger,
    /// The streamed tables in any region of this account (`writer verify --region`).
    ReplicaTables,
    /// The ledger replica of the consumer's own region.
    LocalLedger,
    /// The streams of the streamed tables in the consumer's own region.
    LocalStreams,
    /// The configured CloudFront distribution.
    Distribution,
}

/// Every SDK call in the binaries' sources: (binary, file, operation) and what it is made on
/// in AWS. An empty `on` is a call that never runs in AWS, with the reason. A call found in
/// the code and missing here fails the test: add it, and grant it in the template.
const CALLS: &[(&str, &str, &str, &[On], &str)] = &[
    (
        "writer",
        "writer/src/store/dynamo.rs",
        "get_item",
        &[On::HomeTables],
        "foreign items, inspect",
    ),
    (
        "writer",
        "writer/src/store/dynamo.rs",
        "put_item",
        &[On::HomeTables],
        "conditional writes",
    ),
    (
        "writer",
        "writer/src/store/dynamo.rs",
        "delete_item",
        &[On::HomeTables],
        "conditional deletes",
    ),
    (
        "writer",
        "writer/src/store/dynamo.rs",
        "batch_write_item",
        &[On::HomeTables],
        "migrate-identities",
    ),
    (
        "writer",
        "writer/src/store/dynamo.rs",
        "transact_write_items",
        &[On::HomeTables],
        "a batch's puts in transactions (--batch-writes transactions), authorized as PutItem",
    ),
    (
        "writer",
        "documents/src/acks.rs",
        "put_item",
        &[On::HomeLedger],
        "delete intents",
    ),
    (
        "writer",
        "writer/src/verify/scan.rs",
        "scan",
        &[On::ReplicaTables, On::HomeLedger],
        "verify",
    ),
    (
        "writer",
        "writer/src/verify/recheck.rs",
        "get_item",
        &[On::ReplicaTables],
        "verify's second look",
    ),
    (
        "writer",
        "writer/src/verify/recheck.rs",
        "query",
        &[On::HomeLedger],
        "verify's second look",
    ),
    (
        "writer",
        "writer/src/status/gather.rs",
        "query",
        &[On::HomeLedger],
        "`writer status`: the acknowledgements of recent writes",
    ),
    (
        "writer",
        "writer/src/sync_wait.rs",
        "query",
        &[On::HomeLedger],
        "`writer sync --wait-regions` and `/v1/sync` with a wait: the regions' acknowledgements",
    ),
    (
        "writer",
        "writer/src/store/tables.rs",
        "create_table",
        &[],
        "`writer tables create`, local only: the stack creates the tables",
    ),
    (
        "writer",
        "writer/src/store/tables.rs",
        "update_time_to_live",
        &[],
        "`writer tables create`, local only",
    ),
    (
        "writer",
        "writer/src/store/tables.rs",
        "list_tables",
        &[],
        "`writer tables create`, local only",
    ),
    (
        "stream-consumer",
        "documents/src/acks.rs",
        "put_item",
        &[On::LocalLedger],
        "acknowledgements",
    ),
    (
        "stream-consumer",
        "stream-consumer/src/ledger.rs",
        "get_item",
        &[On::LocalLedger],
        "delete intents",
    ),
    (
        "stream-consumer",
        "stream-consumer/src/invalidate/cloudfront.rs",
        "create_invalidation",
        &[On::Distribution],
        "cache invalidation",
    ),
    (
        "stream-consumer",
        "stream-consumer/src/poller.rs",
        "describe_table",
        &[],
        "the local poller finds the stream; in AWS the event source mapping names it",
    ),
    // The local poller reads the streams itself; in AWS the event source mappings make the
    // same calls with the function's role.
    (
        "stream-consumer",
        "stream-consumer/src/poller.rs",
        "describe_stream",
        &[On::LocalStreams],
        "event source mapping",
    ),
    (
        "stream-consumer",
        "stream-consumer/src/poller.rs",
        "get_shard_iterator",
        &[On::LocalStreams],
        "event source mapping",
    ),
    (
        "stream-consumer",
        "stream-consumer/src/poller.rs",
        "get_records",
        &[On::LocalStreams],
        "event source mapping",
    ),
];

/// Grants a service needs of a binary's role beyond the binary's own calls.
const SERVICE_GRANTS: &[(&str, &str, On, &str)] = &[(
    "stream-consumer",
    "dynamodb:ListStreams",
    On::LocalStreams,
    "Lambda's DynamoDB event source mappings",
)];

/// The SDK crates whose operations are looked for, with their IAM prefix.
const SDKS: [(&str, &str); 3] = [
    ("aws-sdk-dynamodb", "dynamodb"),
    ("aws-sdk-dynamodbstreams", "dynamodb"),
    ("aws-sdk-cloudfront", "cloudfront"),
];

fn cargo_metadata() -> &'static Value {
    static METADATA: OnceLock<Value> = OnceLock::new();
    METADATA.get_or_init(|| {
        // For this machine's platform only: the others' dependencies need not be downloaded.
        let rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("-vV")
            .output()
            .expect("running rustc -vV");
        let host = String::from_utf8_lossy(&rustc.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
            .expect("rustc -vV names the host");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .args(["--filter-platform", &host, "--manifest-path"])
            .arg(edge_tests::repo_root().join("Cargo.toml"))
            .output()
            .expect("running cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
    })
}

fn package_by_name(name: &str) -> &'static Value {
    cargo_metadata()["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no package {name} in cargo metadata"))
}

fn package_dir(package: &Value) -> PathBuf {
    PathBuf::from(package["manifest_path"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Operation name (snake case, as the fluent client method) -> the SDK crates that have it,
/// each with its IAM action; from the operation modules of each SDK crate in the build.
fn sdk_operations() -> BTreeMap<String, Vec<(&'static str, String)>> {
    let mut ops: BTreeMap<String, Vec<(&'static str, String)>> = BTreeMap::new();
    for (krate, prefix) in SDKS {
        let dir = package_dir(package_by_name(krate)).join("src/operation");
        let mut found = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let name = entry.unwrap().file_name().to_string_lossy().to_string();
            let Some(op) = name.strip_suffix(".rs") else {
                continue;
            };
            let action: String = op
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            ops.entry(op.to_string())
                .or_default()
                .push((krate, format!("{prefix}:{action}")));
            found += 1;
        }
        assert!(found > 0, "no operations under {}", dir.display());
    }
    ops
}

/// The workspace packages compiled into a package (itself included), by normal dependencies.
fn workspace_closure(package: &str) -> Vec<&'static Value> {
    let metadata = cargo_metadata();
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let nodes: BTreeMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = package_by_name(package)["id"].as_str().unwrap();
    let mut seen = BTreeSet::from([root]);
    let mut todo = vec![root];
    while let Some(id) = todo.pop() {
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let dep_id = dep["pkg"].as_str().unwrap();
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal && members.contains(dep_id) && seen.insert(dep_id) {
                todo.push(dep_id);
            }
        }
    }
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| seen.contains(p["id"].as_str().unwrap()))
        .collect()
}

fn rust_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Method calls without arguments (`.get_item()`: the SDK's fluent builders) outside the
/// unit tests of a file.
fn argless_calls(source: &str) -> BTreeSet<String> {
    // The unit test module (`#[cfg(test)] mod ...`), which is the end of a file here; a
    // test-only item elsewhere does not hide the code after it.
    let code = source
        .match_indices("#[cfg(test)]")
        .find(|(at, attr)| source[at + attr.len()..].trim_start().starts_with("mod "))
        .map_or(source, |(at, _)| &source[..at]);
    // Without comments: a call named in a comment is no call.
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let code = code.as_str();
    let bytes = code.as_bytes();
    let mut calls = BTreeSet::new();
    for (i, _) in code.match_indices('.') {
        let start = i + 1;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end] == b'_'
                || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        if end > start && code[end..].starts_with("()") {
            calls.insert(code[start..end].to_string());
        }
    }
    calls
}

/// The IAM action that authorizes an operation. A DynamoDB transaction has no action of its
/// own: "permissions for Put, Update, Delete, and Get actions are governed by the
/// permissions used for the underlying PutItem, UpdateItem, DeleteItem, and GetItem
/// operations" (AWS, "Using IAM with DynamoDB transactions"). The writer's transactions
/// only put.
fn authorized_as(action: &str) -> &str {
    match action {
        "dynamodb:TransactWriteItems" => "dynamodb:PutItem",
        other => other,
    }
}

/// (binary, file relative to the repository, operation, IAM action) of every SDK call.
fn sdk_calls() -> BTreeSet<(String, String, String, String)> {
    let ops = sdk_operations();
    let root = edge_tests::repo_root();
    let mut calls = BTreeSet::new();
    for (binary, package) in [
        ("writer", "edge-writer"),
        ("stream-consumer", "stream-consumer"),
    ] {
        for package in workspace_closure(package) {
            let mut files = Vec::new();
            rust_files(&package_dir(package).join("src"), &mut files);
            for file in files {
                let source = std::fs::read_to_string(&file).unwrap();
                let relative = file
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                for call in argless_calls(&source) {
                    let Some(actions) = ops.get(&call) else {
                        continue;
                    };
                    // A name several SDKs share: the one the file uses.
                    let actions: Vec<&String> = actions
                        .iter()
                        .filter(|(krate, _)| {
                            actions.len() == 1
                                || source.contains(&format!("{}::", krate.replace('-', "_")))
                        })
                        .map(|(_, action)| action)
                        .collect();
                    assert_eq!(
                        actions.len(),
                        1,
                        "{relative}: .{call}() is an operation of several SDKs; cannot tell which"
                    );
                    calls.insert((
                        binary.to_string(),
                        relative.clone(),
                        call.clone(),
                        authorized_as(actions[0]).to_string(),
                    ));
                }
            }
        }
    }
    calls
}

/// A template resource as this test names it: `table:<name>@home|@local|@any`,
/// `stream:<name>@local`, `distribution`, or the raw JSON of anything else.
fn resource_name(resource: &Value) -> String {
    if let Some(id) = resource["Fn::GetAtt"][0].as_str() {
        if resource["Fn::GetAtt"][1] == "Arn" {
            if let Some((suffix, _)) = tables().into_iter().find(|(_, (t, _))| *t == id) {
                return format!("table:{suffix}@home");
            }
        }
    }
    if let Some(sub) = resource["Fn::Sub"].as_str() {
        let dynamodb = |region: &str| {
            format!("arn:${{AWS::Partition}}:dynamodb:{region}:${{AWS::AccountId}}:table/${{TablePrefix}}")
        };
        for (region, at) in [("${AWS::Region}", "local"), ("*", "any")] {
            if let Some(rest) = sub.strip_prefix(&dynamodb(region)) {
                return match rest.strip_suffix("/stream/*") {
                    Some(table) => format!("stream:{table}@{at}"),
                    None => format!("table:{rest}@{at}"),
                };
            }
        }
        if sub == "arn:${AWS::Partition}:cloudfront::${AWS::AccountId}:distribution/${InvalidationCloudFrontDistributionId}" {
            return "distribution".to_string();
        }
    }
    resource.to_string()
}

fn expected_resources(on: On) -> Vec<String> {
    let names = TableNames::default();
    let verified = edge_writer::verify::VERIFIED_TABLES;
    match on {
        On::HomeTables => TableKind::ALL
            .iter()
            .map(|k| format!("table:{}@home", names.name(*k)))
            .collect(),
        On::HomeLedger => vec![format!("table:{ACKS_TABLE}@home")],
        On::ReplicaTables => verified
            .iter()
            .map(|k| format!("table:{}@any", names.name(*k)))
            .collect(),
        On::LocalLedger => vec![format!("table:{ACKS_TABLE}@local")],
        On::LocalStreams => STREAMED
            .iter()
            .map(|k| format!("stream:{}@local", names.name(*k)))
            .collect(),
        On::Distribution => vec!["distribution".to_string()],
    }
}

/// Every (action, resource) a role grants for the services looked at.
fn granted(role: &str) -> BTreeSet<(String, String)> {
    let mut grants = BTreeSet::new();
    for statement in role_statements(role) {
        assert_eq!(statement["Effect"], "Allow", "{role}: {statement}");
        for action in actions(role, &statement) {
            if !(action.starts_with("dynamodb:") || action.starts_with("cloudfront:")) {
                continue;
            }
            for resource in statement_resources(&statement) {
                grants.insert((action.to_string(), resource_name(resource)));
            }
        }
    }
    grants
}

fn consumer_role() -> &'static str {
    resources()
        .values()
        .find(|r| r["Type"] == "AWS::Serverless::Function")
        .expect("the stream consumer")["Properties"]["Role"]["Fn::GetAtt"][0]
        .as_str()
        .expect("Role is !GetAtt <role>.Arn")
}

fn writer_role() -> &'static str {
    writer_task_role(writer_task())
}

#[test]
fn every_sdk_call_of_each_binary_is_granted_on_its_resources_and_nothing_else() {
    assert_eq!(
        STREAMED,
        edge_writer::verify::VERIFIED_TABLES,
        "the consumer's streams are the tables verify compares"
    );
    let calls = sdk_calls();
    println!("SDK calls found in the sources:");
    for (binary, file, op, action) in &calls {
        println!("  {binary}\t{action}\t{file} (.{op}())");
    }
    // The code and CALLS list the same calls.
    let listed: BTreeSet<(String, String, String)> = CALLS
        .iter()
        .map(|(b, f, o, _, _)| (b.to_string(), f.to_string(), o.to_string()))
        .collect();
    let found: BTreeSet<(String, String, String)> = calls
        .iter()
        .map(|(b, f, o, _)| (b.clone(), f.clone(), o.clone()))
        .collect();
    let unlisted: Vec<_> = found.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "calls (binary, file, operation) that CALLS does not list: {unlisted:?}; add each \
         with the resources it is made on, and grant it to the binary's role in the template"
    );
    let gone: Vec<_> = listed.difference(&found).collect();
    assert!(
        gone.is_empty(),
        "CALLS lists calls the sources no longer make: {gone:?}"
    );

    let action_of: BTreeMap<(String, String, String), String> = calls
        .into_iter()
        .map(|(b, f, o, a)| ((b, f, o), a))
        .collect();
    for (binary, role) in [
        ("writer", writer_role()),
        ("stream-consumer", consumer_role()),
    ] {
        let mut needed = BTreeSet::new();
        for (b, file, op, on, why) in CALLS.iter().filter(|c| c.0 == binary) {
            let action = &action_of[&(b.to_string(), file.to_string(), op.to_string())];
            for resource in on.iter().flat_map(|o| expected_resources(*o)) {
                needed.insert((action.clone(), resource, format!("{file} .{op}() ({why})")));
            }
        }
        for (b, action, on, why) in SERVICE_GRANTS {
            if *b == binary {
                for resource in expected_resources(*on) {
                    needed.insert((action.to_string(), resource, why.to_string()));
                }
            }
        }
        let grants = granted(role);
        for (action, resource, why) in &needed {
            assert!(
                grants.contains(&(action.clone(), resource.clone())),
                "{role} ({binary}) lacks {action} on {resource}, needed by {why}"
            );
        }
        let justified: BTreeSet<(String, String)> =
            needed.into_iter().map(|(a, r, _)| (a, r)).collect();
        let extra: Vec<_> = grants.difference(&justified).collect();
        assert!(
            extra.is_empty(),
            "{role} ({binary}) grants {extra:?}, which no call of the {binary} needs"
        );
    }

    // No other role or policy grants any of these services.
    for (id, resource) in resources() {
        let kind = resource["Type"].as_str().unwrap_or_default();
        let documents: Vec<&Value> = match kind {
            "AWS::IAM::Role" if id != writer_role() && id != consumer_role() => resource
                ["Properties"]["Policies"]
                .as_array()
                .into_iter()
                .flatten()
                .collect(),
            "AWS::IAM::RolePolicy" | "AWS::IAM::Policy" | "AWS::IAM::ManagedPolicy" => {
                vec![&resource["Properties"]]
            }
            _ => continue,
        };
        let text = serde_json::to_string(&documents).unwrap();
        assert!(
            !text.contains("\"dynamodb:") && !text.contains("\"cloudfront:"),
            "{id} grants DynamoDB or CloudFront actions; they belong to the binaries' roles"
        );
    }
}

#[test]
fn a_silent_or_stalled_writer_alarms() {
    for (metric, field) in [
        ("OldestDueAgeSeconds", "oldest_due_age_seconds"),
        ("OldestChangeAgeSeconds", "oldest_change_age_seconds"),
    ] {
        let filter = resources()
            .iter()
            .find(|(_, r)| {
                r["Type"] == "AWS::Logs::MetricFilter"
                    && r["Properties"]["MetricTransformations"][0]["MetricName"] == metric
            })
            .unwrap_or_else(|| panic!("no metric filter publishes FlagsmithEdge/{metric}"));
        let t = &filter.1["Properties"]["MetricTransformations"][0];
        assert_eq!(
            t["MetricValue"],
            format!("$.fields.{field}"),
            "{}",
            filter.0
        );
        assert!(
            t.get("DefaultValue").is_none(),
            "{}: a default would hide silence",
            filter.0
        );
        let (id, alarm) = resources()
            .iter()
            .find(|(_, r)| {
                r["Type"] == "AWS::CloudWatch::Alarm" && r["Properties"]["MetricName"] == metric
            })
            .unwrap_or_else(|| panic!("no alarm on FlagsmithEdge/{metric}"));
        let props = &alarm["Properties"];
        assert_eq!(alarm["Condition"], "WriterSettingsGiven", "{id}");
        assert_eq!(
            props["TreatMissingData"], "breaching",
            "{id}: a writer that logs nothing must alarm"
        );
        assert_eq!(props["ComparisonOperator"], "GreaterThanThreshold", "{id}");
        assert_eq!(props["Statistic"], "Maximum", "{id}");
        // One line a minute (60-65 s apart): a 60 s period can miss one, five in a row cannot.
        assert_eq!(props["Period"], 60, "{id}");
        assert_eq!(props["EvaluationPeriods"], 5, "{id}");
        assert_eq!(props["DatapointsToAlarm"], 5, "{id}");
    }
}

#[test]
fn the_core_api_may_call_sync_with_the_token_from_secrets_manager() {
    let task = writer_task();
    let container = &task["Properties"]["ContainerDefinitions"][0];
    let secrets = container["Secrets"].as_array().expect("Secrets");
    let token = secrets
        .iter()
        .find_map(|s| {
            let branches = s["Fn::If"].as_array()?;
            (branches[1]["Name"] == "WRITER_SYNC_TOKEN").then_some(branches)
        })
        .expect("WRITER_SYNC_TOKEN is a secret of the writer's container (under !If)");
    assert_eq!(token[0], "HasSyncToken");
    assert_eq!(token[1]["ValueFrom"]["Ref"], "SyncTokenSecretArn");

    // The execution role (which fetches secrets) may read it.
    let execution = task["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]
        .as_str()
        .unwrap();
    let reads = role_statements(execution).into_iter().any(|s| {
        actions(execution, &s).contains(&"secretsmanager:GetSecretValue")
            && statement_resources(&s)
                .iter()
                .any(|r| r["Fn::If"][1]["Ref"] == "SyncTokenSecretArn")
    });
    assert!(reads, "{execution} may not read SyncTokenSecretArn");

    // The HTTP port, and the core API's group admitted to it on the writer's group.
    let command: Vec<&str> = container["Command"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let addr = command
        .iter()
        .position(|a| *a == "--http-addr")
        .map(|i| command[i + 1])
        .expect("--http-addr");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(container["PortMappings"][0]["ContainerPort"], port);
    let ingress = resources()
        .values()
        .find(|r| {
            r["Type"] == "AWS::EC2::SecurityGroupIngress"
                && r["Properties"]["SourceSecurityGroupId"]["Ref"] == "CoreApiSecurityGroupId"
        })
        .expect("an ingress rule for CoreApiSecurityGroupId");
    let props = &ingress["Properties"];
    assert_eq!(props["GroupId"]["Fn::GetAtt"][0], "WriterSecurityGroup");
    assert_eq!(
        (props["FromPort"].clone(), props["ToPort"].clone()),
        (port.into(), port.into())
    );
    assert_eq!(props["IpProtocol"], "tcp");
    let access = &template()["Conditions"][ingress["Condition"].as_str().unwrap()];
    assert!(
        access.to_string().contains("HasSyncToken"),
        "the port opens only with a token: {access}"
    );
}
