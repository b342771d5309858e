//! The judgement of `writer status` and its two renderings, text and JSON (no I/O).
//!
//! Something needs an operator ([`Report::needs_operator`], exit code 2) when:
//!
//! - capture is paused, its triggers are missing or outdated, or a capture gap waits for
//!   `writer backfill --gap`;
//! - the oldest unresolved change, or the oldest due document, has waited longer than
//!   `max_due_age` (a writer stopped, stuck or far behind);
//! - there are more than `max_dead_letters` dead letters (the writer's; ingestion's, apart);
//! - the writer's p99 lag over the window is above `max_lag_p99` (when set);
//! - an identity migration is unfinished and not running (it failed or was stopped), or
//!   running without progress for `migration_stall`;
//! - a region has not acknowledged a sampled write made more than `unconfirmed_after` ago;
//! - the last `writer verify` found drift (repaired or not) or failed, or (when
//!   `verify_max_age` is set) it never ran or ran longer ago than that.

use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::gather::{age, Figures};
use super::Thresholds;
use crate::state::identity_migrations::Progress;

/// Something that needs an operator: which check, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `capture`, `change_log`, `queue`, `dead_letters`, `lag`, `migration`, `region` or
    /// `verify`.
    pub check: &'static str,
    pub message: String,
}

/// The figures with their judgement.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `ok`, or `attention` when something needs an operator.
    pub status: &'static str,
    pub problems: Vec<Problem>,
    pub thresholds: Thresholds,
    #[serde(flatten)]
    pub figures: Figures,
}

impl Report {
    pub fn needs_operator(&self) -> bool {
        !self.problems.is_empty()
    }

    /// The command's exit code: 0 healthy, 2 when an operator is needed.
    pub fn exit_code(&self) -> i32 {
        if self.needs_operator() {
            2
        } else {
            0
        }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A duration for people: `850 ms`, `42 s`, `12 min`, `5 h`, `3 days`.
pub fn human(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 2.0 * 3600.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 2.0 * 86_400.0 {
        format!("{:.0} h", s / 3600.0)
    } else {
        format!("{:.0} days", s / 86_400.0)
    }
}

fn lag_text(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{s:.3} s"))
}

/// Percent of the identities in scope at or below the checkpoint (None: not counted, or none
/// in scope).
fn percent(m: &Progress) -> Option<f64> {
    match (m.done, m.total) {
        (Some(done), Some(total)) if total > 0 => Some(done as f64 * 100.0 / total as f64),
        _ => None,
    }
}

/// Identities per second over the job's run (its first start to its last checkpoint, or to
/// its end).
fn rate(m: &Progress) -> Option<f64> {
    let end = m.finished_at.unwrap_or(m.updated_at);
    let secs = (end - m.started_at).num_milliseconds() as f64 / 1000.0;
    (secs > 0.0 && m.processed > 0).then(|| m.processed as f64 / secs)
}

fn scope(m: &Progress) -> String {
    match m.environment_id {
        Some(e) => format!("project {} (environment {e})", m.project_id),
        None => format!("project {}", m.project_id),
    }
}

/// Judges the figures.
pub fn assess(figures: Figures, thresholds: &Thresholds) -> Report {
    let mut problems = Vec::new();
    let mut problem = |check, message: String| problems.push(Problem { check, message });
    let now = figures.checked_at;
    let max_due = thresholds.max_due_age.as_secs_f64();

    let c = &figures.capture;
    if !c.enabled {
        problem(
            "capture",
            format!(
                "capture is PAUSED since {}{}: core changes are not replicated; run `writer capture resume`, then `writer backfill --gap`",
                time(c.changed_at),
                c.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            ),
        );
    }
    if !c.tables_not_installed.is_empty() {
        problem(
            "capture",
            format!(
                "capture triggers are missing or outdated on {}: run `writer capture install`",
                c.tables_not_installed.join(", ")
            ),
        );
    }
    if c.enabled && !c.open_gaps.is_empty() {
        problem(
            "capture",
            format!(
                "{} capture gap(s) not backfilled (the first paused at {}): run `writer backfill --gap`",
                c.open_gaps.len(),
                time(c.open_gaps[0].paused_at)
            ),
        );
    }
    let q = &figures.queue;
    if q.oldest_change_age_seconds > max_due {
        problem(
            "change_log",
            format!(
                "the oldest captured change has waited {} to be queued (over {}): is a writer running? see `capture failed` in its log",
                human(q.oldest_change_age_seconds),
                human(max_due)
            ),
        );
    }
    if q.oldest_due_age_seconds > max_due {
        problem(
            "queue",
            format!(
                "the oldest due document has waited {} (over {}), {} documents due: a writer is stopped, stuck or behind (its /healthz and log say which)",
                human(q.oldest_due_age_seconds),
                human(max_due),
                q.due
            ),
        );
    }
    let (ingestion, writer): (Vec<_>, Vec<_>) = figures
        .dead_letters
        .iter()
        .partition(|d| d.kind == "ingestion");
    let parked: i64 = writer.iter().map(|d| d.count).sum();
    if parked > thresholds.max_dead_letters {
        let kinds: Vec<String> = writer
            .iter()
            .map(|d| format!("{} {}", d.kind, d.count))
            .collect();
        problem(
            "dead_letters",
            format!(
                "{parked} documents in dead letters ({}): see `writer dead-letters list`, fix the data, then `writer dead-letters replay`",
                kinds.join(", ")
            ),
        );
    }
    let unmerged: i64 = ingestion.iter().map(|d| d.count).sum();
    if unmerged > thresholds.max_dead_letters {
        problem(
            "dead_letters",
            format!(
                "{unmerged} edge items could not be ingested into core: see `writer ingestion dead-letters`"
            ),
        );
    }
    if let (Some(max), Some(p99)) = (thresholds.max_lag_p99, figures.lag.lag.p99_seconds) {
        if p99 > max.as_secs_f64() {
            problem(
                "lag",
                format!(
                    "replication lag p99 over the last {} is {} (over {})",
                    human(figures.lag.window_seconds),
                    lag_text(Some(p99)),
                    lag_text(Some(max.as_secs_f64()))
                ),
            );
        }
    }
    for m in figures.migrations.iter().filter(|m| m.status != "COMPLETE") {
        let done = percent(m).map_or(String::new(), |p| format!(" at {p:.1}%"));
        let idle = age(now, m.updated_at);
        if !m.running {
            problem(
                "migration",
                format!(
                    "the identity migration of {} is unfinished{done} and not running (last progress {}): it failed or was stopped; resume it with `writer migrate-identities --project {}{}`",
                    scope(m),
                    time(m.updated_at),
                    m.project_id,
                    m.environment_id.map(|e| format!(" --environment {e}")).unwrap_or_default()
                ),
            );
        } else if idle > thresholds.migration_stall {
            problem(
                "migration",
                format!(
                    "the identity migration of {} is running{done} but made no progress for {} (over {})",
                    scope(m),
                    human(idle.as_secs_f64()),
                    human(thresholds.migration_stall.as_secs_f64())
                ),
            );
        }
    }
    for r in figures.regions.regions.iter().filter(|r| r.overdue > 0) {
        problem(
            "region",
            format!(
                "region {}: {} of the last {} writes not acknowledged after {} (oldest: {} written {}): is its stream consumer running? `writer verify` lists the items",
                r.name,
                r.overdue,
                r.writes_checked,
                human(thresholds.unconfirmed_after.as_secs_f64()),
                r.oldest_unconfirmed_doc.as_deref().unwrap_or("?"),
                r.oldest_unconfirmed_written_at.map(time).unwrap_or_default()
            ),
        );
    }
    match &figures.verify {
        Some(v) if v.outcome == "failed" => problem(
            "verify",
            format!(
                "the last `writer verify` ({}) failed: {}",
                time(v.finished_at),
                v.error.as_deref().unwrap_or("?")
            ),
        ),
        Some(v) if v.outcome == "drift" || v.outcome == "repaired" => {
            let counts: Vec<String> = v
                .drift_counts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let advice = if v.outcome == "repaired" {
                "every drifting document was re-written: run `writer verify` again once replication has carried it"
            } else {
                "see its report; `writer verify --repair` re-writes the drifting documents"
            };
            problem(
                "verify",
                format!(
                    "the last `writer verify` ({}) found drift ({}): {advice}",
                    time(v.finished_at),
                    counts.join(", ")
                ),
            );
        }
        _ => {}
    }
    if let Some(max) = thresholds.verify_max_age {
        match &figures.verify {
            None => problem(
                "verify",
                "`writer verify` never ran (or ran before it recorded its runs)".into(),
            ),
            Some(v) if age(now, v.finished_at) > max => problem(
                "verify",
                format!(
                    "the last `writer verify` finished {} ago (over {})",
                    human(age(now, v.finished_at).as_secs_f64()),
                    human(max.as_secs_f64())
                ),
            ),
            Some(_) => {}
        }
    }
    Report {
        status: if problems.is_empty() {
            "ok"
        } else {
            "attention"
        },
        problems,
        thresholds: thresholds.clone(),
        figures,
    }
}

impl Report {
    /// The text rendering: the verdict and the problems first, then one section per figure.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let f = &self.figures;
        let now = f.checked_at;
        if self.problems.is_empty() {
            let _ = writeln!(out, "writer status: ok ({})", time(now));
        } else {
            let _ = writeln!(
                out,
                "writer status: NEEDS AN OPERATOR, {} problem(s) ({})",
                self.problems.len(),
                time(now)
            );
            for p in &self.problems {
                let _ = writeln!(out, "  ! [{}] {}", p.check, p.message);
            }
        }

        let c = &f.capture;
        let _ = write!(
            out,
            "capture: {} since {}",
            if c.enabled { "on" } else { "PAUSED" },
            time(c.changed_at)
        );
        if let Some(reason) = &c.reason {
            let _ = write!(out, " ({reason})");
        }
        if c.tables_not_installed.is_empty() {
            out.push_str("; triggers installed");
        } else {
            let _ = write!(
                out,
                "; triggers MISSING or outdated on {}",
                c.tables_not_installed.join(", ")
            );
        }
        if c.open_gaps.is_empty() {
            out.push_str("; no gap to backfill\n");
        } else {
            let _ = writeln!(out, "; {} gap(s) not backfilled", c.open_gaps.len());
        }
        for g in &c.open_gaps {
            let _ = writeln!(
                out,
                "  gap {}: not captured from {} until {}",
                g.id,
                time(g.paused_at),
                g.resumed_at
                    .map(time)
                    .unwrap_or_else(|| "now (still paused)".into())
            );
        }
        let q = &f.queue;
        if c.change_log_rows == 0 {
            out.push_str("change log: empty\n");
        } else {
            let _ = writeln!(
                out,
                "change log: {} rows waiting, the oldest for {}",
                c.change_log_rows,
                human(q.oldest_change_age_seconds)
            );
        }
        if q.due == 0 {
            let _ = writeln!(out, "queue: {} documents, none due", q.depth);
        } else {
            let _ = writeln!(
                out,
                "queue: {} documents, {} due, the oldest due waiting {}",
                q.depth,
                q.due,
                human(q.oldest_due_age_seconds)
            );
        }

        if f.dead_letters.is_empty() {
            out.push_str("dead letters: none\n");
        } else {
            let total: i64 = f.dead_letters.iter().map(|d| d.count).sum();
            let _ = writeln!(out, "dead letters: {total}");
            for d in &f.dead_letters {
                let _ = writeln!(
                    out,
                    "  {}: {}; oldest {} since {}: {}",
                    d.kind,
                    d.count,
                    d.oldest_key,
                    time(d.oldest_failed_at),
                    first_line(&d.oldest_error, 160)
                );
            }
        }

        let l = &f.lag.lag;
        let _ = writeln!(
            out,
            "lag (core commit to DynamoDB, last {}): {} writes, {} of them of queued changes; p50 {}, p99 {}, max {}",
            human(f.lag.window_seconds),
            l.writes,
            l.measured,
            lag_text(l.p50_seconds),
            lag_text(l.p99_seconds),
            lag_text(l.max_seconds)
        );

        if f.migrations.is_empty() {
            out.push_str("identity migrations: none\n");
        } else {
            out.push_str("identity migrations:\n");
        }
        for m in &f.migrations {
            let rate = rate(m).map_or("-".into(), |r| format!("{r:.0} identities/s"));
            if m.status == "COMPLETE" {
                let _ = writeln!(
                    out,
                    "  {}: complete (100%), {} identities at {rate}, finished {}",
                    scope(m),
                    m.processed,
                    m.finished_at.map(time).unwrap_or_default()
                );
            } else {
                let pct = percent(m).map_or("-".into(), |p| format!("{p:.1}%"));
                let eta = match (rate_value(m), m.done, m.total) {
                    (Some(r), Some(done), Some(total)) if m.running && total > done => {
                        format!(", about {} left", human((total - done) as f64 / r))
                    }
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "  {}: in progress, {pct} ({} of {} identities), {rate}{eta}; {}, last progress {} ago",
                    scope(m),
                    m.done.unwrap_or(0),
                    m.total.unwrap_or(0),
                    if m.running { "running" } else { "NOT running" },
                    human(age(now, m.updated_at).as_secs_f64())
                );
            }
        }

        let r = &f.regions;
        if r.sample_limit == 0 {
            out.push_str("regions: not checked (--ack-sample 0)\n");
        } else {
            let _ = writeln!(
                out,
                "regions: acknowledgements of the last {} writes ({} items; a sample of at most {} writes{})",
                r.sampled_writes,
                r.sampled_items,
                r.sample_limit,
                if r.capped { ", capped by its items" } else { "" }
            );
            if r.regions.is_empty() {
                out.push_str(
                    "  no region given (--region) and none acknowledged the sampled writes\n",
                );
            }
        }
        for g in &r.regions {
            let newest = match g.newest_ack_at {
                Some(t) => format!(
                    "newest acknowledgement {} ago (lag {})",
                    human(age(now, t).as_secs_f64()),
                    lag_text(g.newest_ack_lag_seconds)
                ),
                None => "no acknowledgement".into(),
            };
            let mut unconfirmed = format!(
                "{} of {} writes unconfirmed",
                g.unconfirmed, g.writes_checked
            );
            if g.unconfirmed > 0 {
                let _ = write!(
                    unconfirmed,
                    " ({} for over {}; oldest {} written {} ago)",
                    g.overdue,
                    human(self.thresholds.unconfirmed_after.as_secs_f64()),
                    g.oldest_unconfirmed_doc.as_deref().unwrap_or("?"),
                    g.oldest_unconfirmed_written_at
                        .map(|t| human(age(now, t).as_secs_f64()))
                        .unwrap_or_default()
                );
            }
            let _ = writeln!(
                out,
                "  {}: {newest}; {unconfirmed}; lag p50 {}, p99 {} ({} acknowledgements in the last {})",
                g.name,
                lag_text(g.lag_p50_seconds),
                lag_text(g.lag_p99_seconds),
                g.lag_samples,
                human(f.lag.window_seconds)
            );
        }

        match &f.verify {
            None => out.push_str("verify: never ran\n"),
            Some(v) => {
                let counts: Vec<String> = v
                    .drift_counts
                    .iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect();
                let _ = write!(
                    out,
                    "verify: last run {} ({} ago, took {}): {}",
                    time(v.finished_at),
                    human(age(now, v.finished_at).as_secs_f64()),
                    human(age(v.finished_at, v.started_at).as_secs_f64()),
                    v.outcome
                );
                if !counts.is_empty() {
                    let _ = write!(out, " ({})", counts.join(", "));
                }
                if let Some(e) = &v.error {
                    let _ = write!(out, ": {}", first_line(e, 200));
                }
                let _ = writeln!(
                    out,
                    "; {} items expected; regions {}{}",
                    v.expected_items,
                    v.regions.join(", "),
                    if v.repair { "; with --repair" } else { "" }
                );
            }
        }
        out
    }
}

fn rate_value(m: &Progress) -> Option<f64> {
    rate(m).filter(|r| *r > 0.0)
}

fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::control::{CaptureStatus, Gap};
    use crate::state::dead_letters::KindSummary;
    use crate::state::verify_runs::VerifyRun;
    use crate::state::write_log::Lag;
    use crate::status::gather::{LagFigures, Queue, Regions};
    use crate::status::regions::RegionFigures;
    use std::time::Duration;

    fn healthy(now: DateTime<Utc>) -> Figures {
        Figures {
            checked_at: now,
            capture: CaptureStatus {
                enabled: true,
                reason: None,
                changed_at: now - chrono::Duration::days(1),
                tables_not_installed: vec![],
                open_gaps: vec![],
                change_log_rows: 0,
                oldest_change_at: None,
            },
            queue: Queue {
                depth: 2,
                due: 1,
                oldest_due_age_seconds: 0.5,
                oldest_change_age_seconds: 0.0,
            },
            dead_letters: vec![],
            lag: LagFigures {
                window_seconds: 300.0,
                lag: Lag {
                    writes: 10,
                    measured: 8,
                    p50_seconds: Some(0.04),
                    p99_seconds: Some(0.2),
                    max_seconds: Some(0.3),
                },
            },
            migrations: vec![Progress {
                project_id: 3,
                environment_id: None,
                status: "IN_PROGRESS".into(),
                processed: 500,
                skipped: 0,
                done: Some(450),
                total: Some(1000),
                started_at: now - chrono::Duration::seconds(10),
                updated_at: now - chrono::Duration::seconds(1),
                finished_at: None,
                running: true,
            }],
            regions: Regions {
                sampled_writes: 10,
                sampled_items: 20,
                sample_limit: 50,
                capped: false,
                regions: vec![RegionFigures {
                    name: "a".into(),
                    acknowledgements: 20,
                    newest_ack_at: Some(now),
                    newest_ack_lag_seconds: Some(0.1),
                    writes_checked: 10,
                    unconfirmed: 1,
                    overdue: 0,
                    oldest_unconfirmed_doc: Some("environment:1".into()),
                    oldest_unconfirmed_written_at: Some(now),
                    lag_samples: 20,
                    lag_p50_seconds: Some(0.1),
                    lag_p99_seconds: Some(0.4),
                }],
            },
            verify: Some(VerifyRun {
                started_at: now - chrono::Duration::minutes(5),
                finished_at: now - chrono::Duration::minutes(4),
                outcome: "clean".into(),
                regions: vec!["a".into()],
                repair: false,
                expected_items: 20,
                drift_counts: Default::default(),
                unprojectable: 0,
                repair_failures: 0,
                error: None,
            }),
        }
    }

    fn checks(r: &Report) -> Vec<&'static str> {
        r.problems.iter().map(|p| p.check).collect()
    }

    #[test]
    fn a_healthy_pipeline_needs_no_one_and_says_what_it_saw() {
        let now = Utc::now();
        let r = assess(healthy(now), &Thresholds::default());
        assert_eq!(r.exit_code(), 0, "{:?}", r.problems);
        assert_eq!(r.status, "ok");
        let text = r.text();
        assert!(text.starts_with("writer status: ok"), "{text}");
        for part in [
            "capture: on since",
            "queue: 2 documents, 1 due",
            "dead letters: none",
            "p50 0.040 s, p99 0.200 s",
            "project 3: in progress, 45.0% (450 of 1000 identities), 56 identities/s",
            "running, last progress 1 s ago",
            "a: newest acknowledgement 0 ms ago",
            "1 of 10 writes unconfirmed (0 for over 5 min",
            "verify: last run",
            ": clean; 20 items expected; regions a",
        ] {
            assert!(text.contains(part), "{part:?} in\n{text}");
        }
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "status",
            "problems",
            "thresholds",
            "checked_at",
            "capture",
            "queue",
            "dead_letters",
            "lag",
            "migrations",
            "regions",
            "verify",
        ] {
            assert!(json.get(key).is_some(), "{key} in {json}");
        }
        assert_eq!(json["thresholds"]["max_due_age_seconds"], 300.0);
        assert_eq!(json["lag"]["p99_seconds"], 0.2);
    }

    #[test]
    fn each_threshold_is_a_problem_with_its_advice() {
        let now = Utc::now();
        let t = Thresholds {
            verify_max_age: Some(Duration::from_secs(60)),
            max_lag_p99: Some(Duration::from_millis(100)),
            ..Thresholds::default()
        };
        let mut f = healthy(now);
        f.capture.enabled = false;
        f.capture.reason = Some("disk full".into());
        f.capture.open_gaps = vec![Gap {
            id: 1,
            paused_at: now,
            resumed_at: None,
            reason: None,
        }];
        f.queue.oldest_due_age_seconds = 301.0;
        f.queue.oldest_change_age_seconds = 400.0;
        f.dead_letters = vec![
            KindSummary {
                kind: "ingestion".into(),
                count: 1,
                oldest_key: "k_x".into(),
                oldest_failed_at: now,
                oldest_error: "bad".into(),
            },
            KindSummary {
                kind: "invalid_data".into(),
                count: 2,
                oldest_key: "environment:9".into(),
                oldest_failed_at: now,
                oldest_error: "condition 4: BOGUS".into(),
            },
        ];
        f.migrations[0].running = false;
        f.regions.regions[0].overdue = 1;
        f.verify.as_mut().unwrap().outcome = "drift".into();
        f.verify
            .as_mut()
            .unwrap()
            .drift_counts
            .insert("missing".into(), 2);
        let r = assess(f, &t);
        assert_eq!(r.exit_code(), 2);
        assert_eq!(
            checks(&r),
            [
                "capture",
                "change_log",
                "queue",
                "dead_letters",
                "dead_letters",
                "lag",
                "migration",
                "region",
                "verify",
                "verify"
            ]
        );
        let text = r.text();
        for part in [
            "NEEDS AN OPERATOR, 10 problem(s)",
            "capture is PAUSED since",
            "(disk full)",
            "`writer capture resume`, then `writer backfill --gap`",
            "2 documents in dead letters (invalid_data 2)",
            "invalid_data: 2; oldest environment:9 since",
            "unfinished at 45.0% and not running",
            "`writer migrate-identities --project 3`",
            "region a: 1 of the last 10 writes not acknowledged after 5 min",
            "found drift (missing 2)",
            "capture: PAUSED since",
        ] {
            assert!(text.contains(part), "{part:?} in\n{text}");
        }

        // Paused with its gap: one problem, not two.
        let mut f = healthy(now);
        f.capture.enabled = false;
        f.capture.open_gaps = vec![Gap {
            id: 1,
            paused_at: now,
            resumed_at: None,
            reason: None,
        }];
        assert_eq!(checks(&assess(f, &Thresholds::default())), ["capture"]);

        // A running migration without progress for too long is stalled.
        let mut f = healthy(now);
        f.migrations[0].updated_at = now - chrono::Duration::minutes(11);
        let r = assess(f, &Thresholds::default());
        assert!(r.problems[0]
            .message
            .contains("made no progress for 11 min"));

        // A verify that never ran is judged only with a maximum age.
        let mut f = healthy(now);
        f.verify = None;
        assert_eq!(assess(f.clone(), &Thresholds::default()).exit_code(), 0);
        assert_eq!(checks(&assess(f, &t)), ["lag", "verify"]);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(0.25), "250 ms");
        assert_eq!(human(42.4), "42 s");
        assert_eq!(human(600.0), "10 min");
        assert_eq!(human(3.0 * 3600.0), "3 h");
        assert_eq!(human(3.0 * 86_400.0), "3 days");
    }
}
