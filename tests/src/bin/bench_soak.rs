//! Soak: the real `writer run` process (release build, HTTP server on, /metrics never
//! scraped, as in the ECS service) replicating a steady stream of flag changes and trait
//! changes for a long time, its resident memory sampled from /proc. Memory must stay flat:
//! the Prometheus recorder's histograms are drained by the writer's own upkeep.
//!
//! Run with `infra/local/bench.sh soak [--minutes N] [--rate N]` (changes per second).

use std::time::{Duration, Instant};

use edge_tests::core::{basic_project, Core, TraitVal, Val};
use edge_tests::dynamo::{start_instance, TestTables};
use edge_tests::pg::TestDb;
use edge_tests::writer::writer_command_for;

fn options() -> (u64, u64) {
    let (mut minutes, mut rate) = (10u64, 50u64);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args
            .get(i + 1)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0);
        let Some(value) = value else {
            eprintln!("usage: bench_soak [--minutes N] [--rate N] (positive integers)");
            std::process::exit(2);
        };
        match args[i].as_str() {
            "--minutes" => minutes = value,
            "--rate" => rate = value,
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    (minutes, rate)
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let (minutes, rate) = options();
    let dynamo = start_instance();
    let db = TestDb::new().await;
    let tables = TestTables::on(&dynamo.endpoint).await;
    let core = Core::new(db.pool.clone());
    let mut envs = Vec::new();
    for e in 0..10 {
        let (_, project, env) = basic_project(&core, &format!("soak{e}")).await;
        let feature = core
            .create_feature(project, "counter", "STANDARD", true, Val::Int(0))
            .await;
        let identities: Vec<i32> = {
            let mut v = Vec::new();
            for i in 0..20 {
                v.push(core.create_identity(env, &format!("u{e}-{i}")).await);
            }
            v
        };
        envs.push((env, feature, identities));
    }
    let binary = edge_tests::target_binary("writer");
    let mut cmd = writer_command_for(&binary, &db.url, &tables);
    cmd.args(["run", "--workers=8", "--http-addr=127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut writer = cmd.spawn().expect("start the writer");
    let pid = writer.id().expect("the writer's pid");
    println!(
        "machine: {}; writer {} (release), {rate} changes/s for {minutes} min, /metrics not scraped",
        edge_tests::machine(),
        binary.display()
    );

    let started = Instant::now();
    let total = Duration::from_secs(minutes * 60);
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let mut next_sample = Instant::now();
    let mut n: u64 = 0;
    let tick = Duration::from_secs_f64(1.0 / rate as f64);
    let mut next_change = Instant::now();
    while started.elapsed() < total {
        if Instant::now() >= next_sample {
            let secs = started.elapsed().as_secs_f64();
            if let Some(mb) = rss_mb(pid) {
                samples.push((secs, mb));
                println!("t={secs:5.0}s rss_mb={mb:.1} changes={n}");
            }
            next_sample += Duration::from_secs(30);
        }
        let (env, feature, identities) = &envs[(n % envs.len() as u64) as usize];
        if n % 2 == 0 {
            core.set_flag(*env, *feature, true, Val::Int(n as i32))
                .await;
        } else {
            let id = identities[(n / 2 % identities.len() as u64) as usize];
            core.set_trait(id, "visits", TraitVal::Int(n as i32)).await;
        }
        n += 1;
        next_change += tick;
        if let Some(wait) = next_change.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    writer.kill().await.ok();
    let warm: Vec<&(f64, f64)> = samples.iter().filter(|(t, _)| *t >= 60.0).collect();
    let (first, last) = (warm.first(), warm.last());
    let max = warm.iter().map(|(_, m)| *m).fold(0.0, f64::max);
    if let (Some(first), Some(last)) = (first, last) {
        println!(
            "rss after 1 min {:.1} MB, at the end {:.1} MB, max {:.1} MB, change {:+.1} MB over {:.0} min; {n} changes",
            first.1,
            last.1,
            max,
            last.1 - first.1,
            (last.0 - first.0) / 60.0
        );
    }
    db.drop_db().await;
}
