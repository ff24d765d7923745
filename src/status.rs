//! `scenewatch status`: the ledger's rows rendered as a table or as JSON. Pure: rows, the poll
//! history and the current time in, text out.

use std::fmt::Write as _;
use std::time::Duration;

use crate::forecast::History;
use crate::ncp::RemoteStatus;
use crate::state::StatusRow;
use crate::watch::Phase;

/// When a waiting job is expected to finish, from its project's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// At about this time (ms since the epoch): the median of its remaining time.
    At(u64),
    /// Longer in its status than almost every job of its project before.
    Overdue,
}

fn expected(r: &StatusRow, history: &History, now_ms: u64) -> Option<Expected> {
    if r.phase != Phase::Waiting || r.removed {
        return None;
    }
    let status = RemoteStatus::from_wire(r.remote_status.as_deref()?);
    let in_status = Duration::from_millis(now_ms.saturating_sub(r.last_change_at_ms?));
    let f = history.forecast(
        r.key.workspace(),
        r.key.project_id(),
        &status,
        in_status,
        in_status,
    )?;
    Some(match f.remaining {
        Some(left) => Expected::At(now_ms.saturating_add(left.as_millis() as u64)),
        None => Expected::Overdue,
    })
}

/// Renders `rows` as an aligned table (or a JSON array when `json`), times relative to `now_ms`;
/// a waiting job's expected finish comes from `history` (see [`crate::forecast`]).
pub fn render(rows: &[StatusRow], history: &History, now_ms: u64, json: bool) -> String {
    if json {
        let items: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let expected = expected(r, history, now_ms);
                serde_json::json!({
                    "watch": r.key.to_string(),
                    "workspace": r.key.workspace(),
                    "projectId": r.key.project_id(),
                    "assetId": r.key.asset_id(),
                    "indexId": r.key.index_id(),
                    "phase": r.phase.as_str(),
                    "remoteStatus": r.remote_status,
                    "polls": r.polls,
                    "lastChangeAt": r.last_change_at_ms.map(rfc3339),
                    "nextPollAt": r.next_poll_at_ms.map(rfc3339),
                    "expectedFinishAt": match expected {
                        Some(Expected::At(t)) => Some(rfc3339(t)),
                        _ => None,
                    },
                    "overdue": expected == Some(Expected::Overdue),
                    "pendingDeliveries": r.pending_deliveries,
                    "parkedDeliveries": r.parked_deliveries,
                    "removed": r.removed,
                    "lastError": r.last_error,
                })
            })
            .collect();
        let mut s = serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".into());
        s.push('\n');
        return s;
    }
    let header = [
        "WATCH",
        "PHASE",
        "REMOTE",
        "POLLS",
        "LAST CHANGE",
        "NEXT POLL",
        "EXPECTED",
        "PENDING",
    ];
    let mut table: Vec<[String; 8]> = vec![header.map(String::from)];
    for r in rows {
        let mut watch = r.key.to_string();
        if r.removed {
            watch.push_str(" (removed)");
        }
        let pending = if r.parked_deliveries > 0 {
            format!("{} (+{} parked)", r.pending_deliveries, r.parked_deliveries)
        } else {
            r.pending_deliveries.to_string()
        };
        table.push([
            watch,
            r.phase.as_str().to_string(),
            r.remote_status
                .as_deref()
                .map_or_else(|| "-".into(), printable),
            r.polls.to_string(),
            r.last_change_at_ms
                .map(|t| relative(t, now_ms))
                .unwrap_or_else(|| "-".into()),
            match r.next_poll_at_ms {
                Some(t) if !r.removed && !r.phase.is_terminal() => relative(t, now_ms),
                _ => "-".into(),
            },
            match expected(r, history, now_ms) {
                Some(Expected::At(t)) => relative(t, now_ms),
                Some(Expected::Overdue) => "overdue".into(),
                None => "-".into(),
            },
            pending,
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &table {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no watches in the ledger yet)\n");
    }
    out
}

/// Text from the API made safe for a terminal: control characters (an escape sequence could
/// rewrite the screen) are shown escaped, and a long value is cut.
fn printable(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", escape_controls(&s[..cut])),
        None => escape_controls(s),
    }
}

/// `s` with every control character (ESC, CR, newline, …) shown as its Rust escape (`\u{1b}`,
/// `\r`, `\n`), so that text from the API or a sink cannot move the cursor or rewrite a
/// terminal: `status` and the progress view of `once` and the demo show API text through it.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn rfc3339(ms: u64) -> String {
    crate::time::format_rfc3339_ms(ms)
}

/// "5m ago" / "in 30s", to the largest two units.
fn relative(t: u64, now: u64) -> String {
    let (d, past) = if t <= now {
        (now - t, true)
    } else {
        (t - now, false)
    };
    let secs = d / 1000;
    let text = if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if secs < 86_400 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else {
        format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600)
    };
    if past {
        format!("{text} ago")
    } else {
        format!("in {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WatchKey;
    use crate::forecast::Stage;

    fn row(asset: &str, phase: Phase) -> StatusRow {
        StatusRow {
            key: WatchKey::new("w", "1", asset, "3").unwrap(),
            phase,
            remote_status: Some("SUMMARIZING".into()),
            polls: 7,
            last_change_at_ms: Some(1_000_000 - 90_000),
            next_poll_at_ms: Some(1_000_000 + 30_000),
            pending_deliveries: 2,
            parked_deliveries: 0,
            removed: false,
            last_error: None,
        }
    }

    #[test]
    fn table_and_json() {
        let rows = vec![row("10", Phase::Waiting), row("11", Phase::Failed)];
        let none = History::default();
        let t = render(&rows, &none, 1_000_000, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "WATCH     PHASE    REMOTE       POLLS  LAST CHANGE  NEXT POLL  EXPECTED  PENDING"
        );
        assert_eq!(
            lines[1],
            "w/1/10/3  waiting  SUMMARIZING  7      1m30s ago    in 30s     -         2"
        );
        assert_eq!(
            lines[2],
            "w/1/11/3  failed   SUMMARIZING  7      1m30s ago    -          -         2"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render(&rows, &none, 1_000_000, true)).unwrap();
        assert_eq!(j[0]["phase"], "waiting");
        assert_eq!(j[0]["nextPollAt"], "1970-01-01T00:17:10.000Z");
        assert_eq!(j[0]["expectedFinishAt"], serde_json::Value::Null);
        assert_eq!(j[1]["pendingDeliveries"], 2);
    }

    #[test]
    fn a_waiting_job_shows_when_its_projects_history_expects_it_to_finish() {
        // Runs of project 1 take ten minutes; this one has run for a minute and a half.
        let mut history = History::default();
        for _ in 0..20 {
            history.observe("w", "1", Stage::Run, Duration::from_secs(600));
        }
        let rows = vec![row("10", Phase::Waiting), row("11", Phase::Failed)];
        let t = render(&rows, &history, 1_000_000, false);
        let lines: Vec<&str> = t.lines().collect();
        let waiting = lines[1].split("in 30s").nth(1).unwrap().trim().to_string();
        assert!(
            waiting.starts_with("in 8m") || waiting.starts_with("in 9m"),
            "{t}"
        );
        assert_eq!(lines[2].split_whitespace().nth(7), Some("-"), "{t}");
        let j: serde_json::Value =
            serde_json::from_str(&render(&rows, &history, 1_000_000, true)).unwrap();
        let at = crate::time::parse_rfc3339_ms(j[0]["expectedFinishAt"].as_str().unwrap()).unwrap();
        let left = at - 1_000_000;
        assert!((450_000..560_000).contains(&left), "{left} ms from now");
        assert_eq!(j[1]["expectedFinishAt"], serde_json::Value::Null);
        // Three times longer than any run before: overdue.
        let mut old = row("12", Phase::Waiting);
        old.last_change_at_ms = Some(10_000_000 - 1_800_000);
        let t = render(&[old.clone()], &history, 10_000_000, false);
        assert!(t.lines().nth(1).unwrap().contains("overdue"), "{t}");
        let j: serde_json::Value =
            serde_json::from_str(&render(&[old], &history, 10_000_000, true)).unwrap();
        assert_eq!(j[0]["overdue"], true);
    }

    #[test]
    fn api_text_cannot_drive_the_terminal() {
        let mut r = row("1", Phase::Waiting);
        r.remote_status = Some("\u{1b}[2J\u{1b}]0;pwned\u{7}SUMMARIZING".into());
        let text = render(&[r], &History::default(), 0, false);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
        assert!(text.contains("\\u{1b}[2J"), "{text}");
    }
}
