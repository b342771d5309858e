//! The deployment template (`infra/aws/template.yaml`) matches the table definitions in
//! `edge_documents::tables`, the one source of truth: same names, keys, attribute types,
//! indexes, streams and billing mode, and no table the code does not know except the
//! replication ledger. The writer's table variables and the consumer's streams point at the
//! right tables, and the writer's and the consumer's roles allow what they call on the
//! ledger and what `writer verify` scans.
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

#[test]
fn the_writer_gets_every_table_under_its_own_variable_and_may_write_each() {
    let task = resources()
        .values()
        .find(|r| r["Type"] == "AWS::ECS::TaskDefinition")
        .expect("the writer's task definition");
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

    // The task role may write items of exactly the five tables, and delete intents into the
    // ledger.
    let task_role = writer_task_role(task);
    let mut writable = BTreeSet::new();
    let mut ledger_actions = BTreeSet::new();
    for statement in role_statements(task_role) {
        let actions = actions(task_role, &statement);
        if statement_resource_ids(&statement) == [acks_id] {
            ledger_actions.extend(actions.iter().map(|a| a.to_string()));
            continue;
        }
        if !actions.contains(&"dynamodb:PutItem") {
            continue;
        }
        // Every call the writer makes (the migration job's BatchWriteItem included).
        for needed in [
            "dynamodb:GetItem",
            "dynamodb:PutItem",
            "dynamodb:DeleteItem",
            "dynamodb:BatchWriteItem",
        ] {
            assert!(actions.contains(&needed), "{task_role}: {needed} missing");
        }
        for resource in statement["Resource"].as_array().expect("Resource list") {
            let id = resource["Fn::GetAtt"][0]
                .as_str()
                .expect("!GetAtt <table>.Arn");
            writable
                .insert(kind_of_resource(id).unwrap_or_else(|| panic!("{id} is no edge table")));
        }
    }
    assert_eq!(
        writable,
        BTreeSet::from(TableKind::ALL),
        "{task_role}: writable tables"
    );
    for needed in ["dynamodb:PutItem", "dynamodb:Scan"] {
        assert!(
            ledger_actions.contains(needed),
            "{task_role}: {needed} on {acks_id} missing (delete intents, `writer verify`)"
        );
    }
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

/// The logical ids of a statement's `!GetAtt <id>.Arn` resources.
fn statement_resource_ids(statement: &Value) -> Vec<&str> {
    statement_resources(statement)
        .into_iter()
        .filter_map(|r| r["Fn::GetAtt"][0].as_str())
        .collect()
}

/// The `!Sub` strings of a statement's resources.
fn statement_resource_subs(statement: &Value) -> Vec<&str> {
    statement_resources(statement)
        .into_iter()
        .filter_map(|r| r["Fn::Sub"].as_str())
        .collect()
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
fn writer_verify_may_scan_the_streamed_tables_in_every_region_and_nothing_else() {
    let task = resources()
        .values()
        .find(|r| r["Type"] == "AWS::ECS::TaskDefinition")
        .expect("the writer's task definition");
    let task_role = writer_task_role(task);
    let defaults = TableNames::default();
    let mut scanned = BTreeSet::new();
    for statement in role_statements(task_role) {
        if !actions(task_role, &statement).contains(&"dynamodb:Scan") {
            continue;
        }
        if statement_resource_ids(&statement) == [acks_table_id()] {
            continue; // the ledger, in the home region (checked above)
        }
        for sub in statement_resource_subs(&statement) {
            let name = sub
                .strip_prefix("arn:${AWS::Partition}:dynamodb:*:${AWS::AccountId}:table/${TablePrefix}")
                .unwrap_or_else(|| {
                    panic!("{task_role}: Scan on {sub}: expected a table of this account in any region")
                });
            scanned.insert(
                defaults
                    .kind_of(name)
                    .unwrap_or_else(|| panic!("{task_role}: Scan on {name}, no edge table")),
            );
        }
        assert!(
            statement_resource_ids(&statement).is_empty(),
            "{task_role}: a Scan statement mixes the replicas with other resources"
        );
    }
    assert_eq!(
        scanned,
        BTreeSet::from(STREAMED),
        "{task_role}: tables `writer verify` may scan in every region"
    );
}

#[test]
fn the_consumer_may_acknowledge_and_read_delete_intents_in_its_local_ledger() {
    let function = resources()
        .values()
        .find(|r| r["Type"] == "AWS::Serverless::Function")
        .expect("the stream consumer");
    let role = function["Properties"]["Role"]["Fn::GetAtt"][0]
        .as_str()
        .expect("Role is !GetAtt <role>.Arn");
    let local_ledger = format!(
        "arn:${{AWS::Partition}}:dynamodb:${{AWS::Region}}:${{AWS::AccountId}}:table/${{TablePrefix}}{ACKS_TABLE}"
    );
    let mut granted = BTreeSet::new();
    for statement in role_statements(role) {
        if statement_resource_subs(&statement).contains(&local_ledger.as_str()) {
            granted.extend(actions(role, &statement).into_iter().map(str::to_string));
        }
    }
    assert_eq!(
        granted,
        BTreeSet::from([
            "dynamodb:GetItem".to_string(),
            "dynamodb:PutItem".to_string()
        ]),
        "{role}: actions on the local ledger replica (acknowledgements, delete intents)"
    );
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

/// Every alarm on a `FlagsmithEdge` metric watches something that is published: by the
/// consumer's embedded metrics (the names of `stream_consumer::metrics::emf`) or by a log
/// metric filter of the template whose pattern matches a line the writer logs.
#[test]
fn every_edge_alarm_watches_a_metric_something_publishes() {
    let emf = stream_consumer::metrics::emf("r", &stream_consumer::BatchReport::default(), 0);
    let emf_names: BTreeSet<String> = emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap().to_string())
        .collect();
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
