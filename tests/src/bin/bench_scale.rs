//! Horizontal scale: 1, 2 and 4 `writer run` processes (release build) on one core database
//! draining the same storm, a trait change on every identity of many environments, committed
//! while no writer runs. Throughput per process count as a ratio of the single process, and
//! where the CPU went (DynamoDB Local, Postgres, the writers), to say where it stops scaling.
//!
//! The reference is the identity migration job (`writer migrate-identities --rewrite`, its
//! defaults) copying the same identities into fresh tables, in the same run, between the
//! storm rounds: a storm should drain at the job's rate. The single process also drains the
//! storm with `--batch-writes puts` (one conditional PutItem per item, no transactions).
//!
//! Each round gets fresh DynamoDB tables (every document is written in full each round, into
//! an empty table), deleted after it (DynamoDB Local slows down with what it holds), after a
//! warm-up round that is not recorded; the single process and the job run first and last,
//! and the faster of their two runs is the base of the ratios.
//!
//! Run with `infra/local/bench.sh scale [--identities N] [--environments N]
//! [--processes 1,2,4] [--workers N] [--batch N]`; `BENCH_WRITER_LOG` (e.g. `edge_writer=debug`)
//! sets the writers' `RUST_LOG` (default `warn`).

use std::time::{Duration, Instant};

use edge_tests::core::{Core, Val};
use edge_tests::dynamo::{start_instance, TestTables};
use edge_tests::pg::TestDb;
use edge_tests::writer::writer_command_for;

struct Options {
    identities: i32,
    environments: i32,
    processes: Vec<usize>,
    workers: usize,
    batch: usize,
}

fn options() -> Options {
    let mut o = Options {
        identities: 20_000,
        environments: 20,
        processes: vec![1, 2, 4],
        workers: 8,
        batch: 25,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: bench_scale [--identities N] [--environments N] [--processes N[,N...]] [--workers N] [--batch N] (positive integers)");
        std::process::exit(2)
    };
    let positive = |v: &str| v.trim().parse::<usize>().ok().filter(|n| *n > 0);
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().unwrap_or_else(|| usage());
        match args[i].as_str() {
            "--identities" => o.identities = positive(&value).unwrap_or_else(|| usage()) as i32,
            "--environments" => o.environments = positive(&value).unwrap_or_else(|| usage()) as i32,
            "--workers" => o.workers = positive(&value).unwrap_or_else(|| usage()),
            "--batch" => o.batch = positive(&value).unwrap_or_else(|| usage()),
            "--processes" => {
                o.processes = value
                    .split(',')
                    .map(|v| positive(v).unwrap_or_else(|| usage()))
                    .collect()
            }
            _ => usage(),
        }
        i += 2;
    }
    o
}

/// CPU seconds (user + system) of a process so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}

/// Processes whose command line contains `needle`.
fn pids_matching(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// CPU seconds of DynamoDB Local, of Postgres (every backend) and of the given writers.
fn cpu_of(dynamo_port: &str, writers: &[u32]) -> (f64, f64, f64) {
    let dynamo: f64 = pids_matching(&format!("-port\0{dynamo_port}"))
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("DynamoDBLocal.jar"))
                .unwrap_or(false)
        })
        .map(cpu_seconds)
        .sum();
    let postgres: f64 = pids_matching("postgres")
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .map(|c| c.trim() == "postgres")
                .unwrap_or(false)
        })
        .map(cpu_seconds)
        .sum();
    let writers: f64 = writers.iter().map(|p| cpu_seconds(*p)).sum();
    (dynamo, postgres, writers)
}

/// What a round runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `processes` writers drain a storm, with `--batch-writes transactions` or `puts`.
    Storm {
        processes: usize,
        transactions: bool,
    },
    /// The identity migration job copies every identity (the reference).
    Job,
}

impl Kind {
    fn label(&self) -> String {
        match self {
            Kind::Storm {
                processes,
                transactions: true,
            } => format!("storm, {processes} writer process(es)"),
            Kind::Storm {
                processes,
                transactions: false,
            } => format!("storm, {processes} writer process(es), --batch-writes puts"),
            Kind::Job => "migration job (reference)".into(),
        }
    }
}

struct Round {
    kind: Kind,
    documents: i64,
    seconds: f64,
    /// When every change of the storm was captured (the change log empty).
    captured_seconds: Option<f64>,
    cpu: (f64, f64, f64),
}

impl Round {
    fn rate(&self) -> f64 {
        self.documents as f64 / self.seconds
    }
}

/// A storm round commits the storm (writers stopped), starts the writers on fresh tables and
/// waits until every change is captured and every due document written; a job round runs
/// the migration job to its end on fresh tables.
#[allow(clippy::too_many_arguments)]
async fn round(
    db: &TestDb,
    core: &Core,
    endpoint: &str,
    dynamo_port: &str,
    project: i32,
    kind: Kind,
    (workers, batch): (usize, usize),
    n: i32,
) -> Round {
    let tables = TestTables::on_with(endpoint, false).await;
    let binary = edge_tests::target_binary("writer");
    let documents = db
        .scalar_i64(&format!(
            "SELECT count(*) FROM environments_identity i JOIN environments_environment e \
             ON e.id = i.environment_id WHERE e.project_id = {project}"
        ))
        .await;
    let mut children = Vec::new();
    let started;
    let cpu_before;
    let mut job_cpu_seconds = None;
    let mut captured_seconds = None;
    let pids: Vec<u32>;
    match kind {
        Kind::Storm {
            processes,
            transactions,
        } => {
            core.exec(&format!(
                "UPDATE environments_trait t SET integer_value = {n} FROM environments_identity i \
                 JOIN environments_environment e ON e.id = i.environment_id \
                 WHERE t.identity_id = i.id AND t.trait_key = 'age' AND e.project_id = {project}"
            ))
            .await;
            started = Instant::now();
            for _ in 0..processes {
                let mut cmd = writer_command_for(&binary, &db.url, &tables);
                cmd.args([
                    "run",
                    &format!("--workers={workers}"),
                    &format!("--batch={batch}"),
                    if transactions {
                        "--batch-writes=transactions"
                    } else {
                        "--batch-writes=puts"
                    },
                    "--http-addr=127.0.0.1:0",
                ])
                .env(
                    "RUST_LOG",
                    std::env::var("BENCH_WRITER_LOG").unwrap_or_else(|_| "warn".into()),
                )
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
                children.push(cmd.spawn().expect("start a writer"));
            }
            pids = children.iter().filter_map(|c| c.id()).collect();
            cpu_before = cpu_of(dynamo_port, &pids);
            let captured_at = std::sync::Mutex::new(None);
            edge_tests::wait::until("the storm drained", Duration::from_secs(1800), || async {
                let (changes, due) = sqlx::query_as::<_, (i64, i64)>(
                    "SELECT (SELECT count(*) FROM edge.change_log), \
                            (SELECT count(*) FROM edge.pending WHERE not_before <= now())",
                )
                .fetch_one(&db.pool)
                .await
                .expect("the queue's depth");
                let mut captured = captured_at.lock().unwrap();
                if changes == 0 && captured.is_none() {
                    *captured = Some(started.elapsed().as_secs_f64());
                }
                (changes == 0 && due == 0).then_some(())
            })
            .await;
            captured_seconds = captured_at.into_inner().unwrap();
        }
        Kind::Job => {
            started = Instant::now();
            let mut cmd = writer_command_for(&binary, &db.url, &tables);
            cmd.args([
                "migrate-identities",
                &format!("--project={project}"),
                "--restart",
                "--rewrite",
                "--no-progress",
            ])
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
            let mut child = cmd.spawn().expect("start the migration job");
            pids = child.id().into_iter().collect();
            cpu_before = cpu_of(dynamo_port, &pids);
            // A process that has exited has no CPU figures: the job's own is its last sample,
            // taken every 100 ms while it runs. Its end is seen as it happens (the wait is
            // what times out), so the job's time is not rounded up to a sample.
            let (status, job_cpu) = loop {
                let sampled = pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
                match tokio::time::timeout(Duration::from_millis(100), child.wait()).await {
                    Ok(status) => break (status.expect("the migration job"), sampled),
                    Err(_) => continue,
                }
            };
            assert!(status.success(), "the migration job failed: {status}");
            job_cpu_seconds = Some(job_cpu);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut cpu_after = cpu_of(dynamo_port, &pids);
    if let Some(job) = job_cpu_seconds {
        cpu_after.2 = job;
    }
    for mut c in children {
        c.kill().await.ok();
    }
    // Every round starts on an instance holding only its own tables.
    tables.delete().await;
    Round {
        kind,
        documents,
        seconds,
        captured_seconds,
        cpu: (
            cpu_after.0 - cpu_before.0,
            cpu_after.1 - cpu_before.1,
            cpu_after.2 - cpu_before.2,
        ),
    }
}

#[tokio::main]
async fn main() {
    let o = options();
    edge_tests::init_logging();
    let dynamo = start_instance();
    let dynamo_port = dynamo
        .endpoint
        .rsplit(':')
        .next()
        .expect("a port")
        .to_string();
    let db = TestDb::new().await;
    let core = Core::new(db.pool.clone());
    let org = core.create_organisation("Scale").await;
    let project = core.create_project(org, "Scale", true, "COMPLETE").await;
    let flag = core
        .create_feature(project, "flag", "STANDARD", false, Val::None)
        .await;
    let per_env = o.identities / o.environments;
    for e in 0..o.environments {
        let env = core
            .create_environment(project, &format!("E{e}"), &format!("scale{e}"))
            .await;
        core.generate_identities(env, &format!("e{e}-"), per_env, flag, 10, false)
            .await;
    }
    core.exec("ANALYZE").await;
    println!(
        "machine: {}; {} identities over {} environments; writers of {} workers each, batches of {} (release)",
        edge_tests::machine(),
        per_env * o.environments,
        o.environments,
        o.workers,
        o.batch
    );

    eprintln!("bench: warm-up round");
    let mut n = 1;
    let storm = |processes: usize, transactions: bool| Kind::Storm {
        processes,
        transactions,
    };
    round(
        &db,
        &core,
        &dynamo.endpoint,
        &dynamo_port,
        project,
        storm(2, true),
        (o.workers, o.batch),
        n,
    )
    .await;
    // The single process and the job first and last, the rest in between.
    let mut order = vec![storm(1, true), Kind::Job, storm(1, false)];
    order.extend(
        o.processes
            .iter()
            .filter(|p| **p != 1)
            .map(|p| storm(*p, true)),
    );
    order.extend([Kind::Job, storm(1, true)]);
    let mut rounds = Vec::new();
    for kind in order {
        n += 1;
        eprintln!("bench: {}", kind.label());
        let r = round(
            &db,
            &core,
            &dynamo.endpoint,
            &dynamo_port,
            project,
            kind,
            (o.workers, o.batch),
            n,
        )
        .await;
        println!(
            "{}: documents={} seconds={:.1} captured_after_s={} documents_per_s={:.0} cpu_s dynamodb={:.1} postgres={:.1} writers={:.1} machine_busy={:.0}%",
            r.kind.label(),
            r.documents,
            r.seconds,
            r.captured_seconds.map_or("-".into(), |c| format!("{c:.1}")),
            r.rate(),
            r.cpu.0,
            r.cpu.1,
            r.cpu.2,
            100.0 * (r.cpu.0 + r.cpu.1 + r.cpu.2)
                / (r.seconds * std::thread::available_parallelism().map_or(1, |p| p.get()) as f64)
        );
        rounds.push(r);
    }
    let best = |pick: &dyn Fn(&Kind) -> bool| {
        rounds
            .iter()
            .filter(|r| pick(&r.kind))
            .map(Round::rate)
            .fold(0.0, f64::max)
    };
    let single = best(&|k| *k == storm(1, true));
    let job = best(&|k| *k == Kind::Job);
    let ratio = |rate: f64, base: f64| {
        if base > 0.0 {
            format!("{:.2}", rate / base)
        } else {
            "-".into()
        }
    };
    println!();
    println!("| round | documents/s | ratio to 1 process | ratio to the job | CPU s: DynamoDB Local / Postgres / writer or job |");
    println!("|---|---|---|---|---|");
    for r in &rounds {
        // The job's Postgres backends have exited when it is sampled: their CPU is not seen.
        let postgres = match r.kind {
            Kind::Job => "-".to_string(),
            _ => format!("{:.0}", r.cpu.1),
        };
        println!(
            "| {} | {:.0} ({} documents in {:.1} s) | {} | {} | {:.0} / {} / {:.0} |",
            r.kind.label(),
            r.rate(),
            r.documents,
            r.seconds,
            match r.kind {
                Kind::Job => "-".into(),
                _ => ratio(r.rate(), single),
            },
            ratio(r.rate(), job),
            r.cpu.0,
            postgres,
            r.cpu.2
        );
    }
    db.drop_db().await;
}
