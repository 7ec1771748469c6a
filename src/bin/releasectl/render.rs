//! What `releasectl` prints: the API's answer under `--json`, tables and lines otherwise.
//! Every write is fallible (no `println!`), so a closed stdout ends the run quietly
//! instead of panicking.

use std::fmt::Display;
use std::io::{self, Write};

use switchyard::api::{
    CertsResponse, HistoryResponse, ReleaseResponse, SmokeResult, StatusResponse,
};

use crate::client::Reply;

/// stdout of a verb, and whether `--json` asked for the API's answers.
pub struct Out {
    json: bool,
    w: Box<dyn Write>,
}

impl Out {
    pub fn new(json: bool, w: impl Write + 'static) -> Out {
        Out {
            json,
            w: Box::new(w),
        }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    /// Under `--json`, the API's answer as it came (pretty-printed); otherwise what `text`
    /// writes of it.
    pub fn answer<T>(
        &mut self,
        reply: &Reply<T>,
        text: impl FnOnce(&mut dyn Write, &T) -> io::Result<()>,
    ) -> io::Result<()> {
        if self.json {
            writeln!(self.w, "{}", pretty(&reply.raw))
        } else {
            text(&mut self.w, &reply.body)
        }
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// An answer of the API, pretty-printed as it came: every field, the daemon's included
/// when it is newer than this `releasectl`. Not JSON: printed as a JSON string.
pub fn pretty(raw: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_string()));
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

/// `-` for none.
pub fn dash<T: Display>(v: Option<T>) -> String {
    v.map_or("-".to_string(), |v| v.to_string())
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
pub fn table(w: &mut dyn Write, rows: &[Vec<String>]) -> io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        writeln!(w, "{}", line.join("  ").trim_end())?;
    }
    Ok(())
}

fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// The `status` table: a row per service (and an ALARM row under a service with one).
pub fn status(w: &mut dyn Write, s: &StatusResponse) -> io::Result<()> {
    let mut rows = vec![header(&[
        "SERVICE",
        "ACTIVE",
        "PREVIOUS",
        "CANARY",
        "BACKENDS",
        "IN-FLIGHT",
    ])];
    for (name, svc) in &s.services {
        let backends: Vec<String> = svc
            .backends
            .iter()
            .map(|(color, list)| {
                let mut b: Vec<String> = list
                    .iter()
                    .map(|b| {
                        let down = if b.healthy { "" } else { " (down)" };
                        match &b.name {
                            Some(name) => format!("{name} ({}){down}", b.addr),
                            None => format!("{}{down}", b.addr),
                        }
                    })
                    .collect();
                if let Some(names) = svc.unresolved.get(color) {
                    b.extend(names.iter().map(|n| format!("{n} (unresolved)")));
                }
                if svc.releasable {
                    format!("{color}: {}", b.join(", "))
                } else {
                    b.join(", ")
                }
            })
            .collect();
        let inflight: Vec<String> = svc
            .inflight
            .iter()
            .map(|(color, n)| {
                let up = svc.upgraded.get(color).copied().unwrap_or(0);
                let ws = if up > 0 {
                    format!(" ({up} ws)")
                } else {
                    String::new()
                };
                if svc.releasable {
                    format!("{color} {n}{ws}")
                } else {
                    format!("{n}{ws}")
                }
            })
            .collect();
        rows.push(vec![
            name.clone(),
            dash(svc.active),
            dash(svc.previous),
            svc.canary
                .as_ref()
                .map_or("-".into(), |c| format!("{} {}%", c.color, c.weight)),
            backends.join("; "),
            inflight.join(", "),
        ]);
        if let Some(alarm) = &svc.alarm {
            rows.push(vec![String::new(), format!("ALARM: {alarm}")]);
        }
    }
    table(w, &rows)?;
    // A site (store = "etcd"): the store and every live instance.
    if let Some(store) = &s.store {
        writeln!(w)?;
        writeln!(w, "store: etcd ({store})")?;
        let mut rows = vec![header(&["INSTANCE", "ADDRESS", "APPLIED", "LEADER"])];
        for i in &s.instances {
            rows.push(vec![
                i.id.clone(),
                i.address.clone(),
                i.applied_revision.to_string(),
                if i.leader { "yes" } else { "-" }.to_string(),
            ]);
        }
        table(w, &rows)?;
    }
    Ok(())
}

/// What a switch, rollback or promote did: the changes, the smoke checks, the drain.
pub fn release(w: &mut dyn Write, r: &ReleaseResponse, verb: &str) -> io::Result<()> {
    if r.changed.is_empty() {
        writeln!(w, "nothing to {verb}: every service already is where asked")?;
    }
    for c in &r.changed {
        writeln!(w, "{}: {} → {}", c.service, c.from, c.to)?;
    }
    if let Some(i) = &r.instances {
        writeln!(w, "applied by {}/{} instances", i.applied, i.total)?;
    }
    let passed = r.smoke.iter().filter(|s| s.ok).count();
    if !r.smoke.is_empty() {
        writeln!(w, "smoke checks: {passed}/{} passed", r.smoke.len())?;
    }
    if let Some(d) = &r.drain {
        if d.drained {
            writeln!(w, "drained in {} ms", d.waited_ms)?;
        } else {
            writeln!(
                w,
                "drain timeout after {} ms; still in flight: {:?}",
                d.waited_ms, d.remaining
            )?;
        }
    }
    Ok(())
}

/// Every smoke result, `ok` or `FAIL`, and the count that passed.
pub fn smoke(w: &mut dyn Write, results: &[SmokeResult]) -> io::Result<()> {
    for s in results {
        writeln!(
            w,
            "{} {} {} {}: expected {}, got {}",
            if s.ok { "ok  " } else { "FAIL" },
            s.service,
            s.backend,
            s.path,
            s.expected,
            s.got
        )?;
    }
    let passed = results.iter().filter(|s| s.ok).count();
    writeln!(w, "{passed}/{} smoke checks passed", results.len())
}

/// The failed smoke checks of a refused switch (under the error, on stderr).
pub fn failures(w: &mut dyn Write, failures: &[SmokeResult]) -> io::Result<()> {
    for f in failures {
        writeln!(
            w,
            "  FAIL {} {} {}: expected {}, got {}",
            f.service, f.backend, f.path, f.expected, f.got
        )?;
    }
    Ok(())
}

/// The `history` table; DETAIL is the event's free-form detail as JSON.
pub fn history(w: &mut dyn Write, h: &HistoryResponse) -> io::Result<()> {
    let mut rows = vec![header(&["TIME", "ACTION", "SERVICES", "RESULT", "DETAIL"])];
    for e in &h.events {
        rows.push(vec![
            e.time.clone(),
            e.action.clone(),
            e.services.join(","),
            e.result.clone(),
            if e.detail.is_null() {
                String::new()
            } else {
                e.detail.to_string()
            },
        ]);
    }
    table(w, &rows)
}

/// The `certs` table.
pub fn certs(w: &mut dyn Write, r: &CertsResponse) -> io::Result<()> {
    let mut rows = vec![header(&[
        "HOST",
        "ISSUER",
        "NOT BEFORE",
        "NOT AFTER",
        "DAYS LEFT",
        "NEXT RENEWAL",
        "LAST ERROR",
    ])];
    for c in &r.certs {
        rows.push(vec![
            c.host.clone(),
            c.issuer.clone(),
            dash(c.not_before.as_ref()),
            dash(c.not_after.as_ref()),
            dash(c.days_left),
            dash(c.next_renewal.as_ref()),
            dash(c.last_error.as_ref()),
        ]);
    }
    table(w, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
        let mut buf = Vec::new();
        f(&mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn status_table_as_in_the_docs() {
        let s: StatusResponse = serde_json::from_str(
            r#"{"services": {
              "web": {"releasable": true, "active": "green", "previous": "blue", "canary": null,
                "backends": {"blue": [{"addr": "127.0.0.1:9101", "healthy": true}],
                             "green": [{"addr": "127.0.0.1:9102", "healthy": true}]},
                "inflight": {"blue": 0, "green": 3}, "upgraded": {"blue": 0, "green": 1}},
              "grafana": {"releasable": false, "active": null, "previous": null, "canary": null,
                "backends": {"default": [{"addr": "127.0.0.1:3000", "healthy": false}]},
                "inflight": {"default": 0}, "upgraded": {}}
            }}"#,
        )
        .unwrap();
        assert_eq!(
            text(|w| status(w, &s)),
            "\
SERVICE  ACTIVE  PREVIOUS  CANARY  BACKENDS                                     IN-FLIGHT
grafana  -       -         -       127.0.0.1:3000 (down)                        0
web      green   blue      -       blue: 127.0.0.1:9101; green: 127.0.0.1:9102  blue 0, green 3 (1 ws)
"
        );
    }

    #[test]
    fn backends_found_by_name_show_the_name_and_the_address() {
        let s: StatusResponse = serde_json::from_str(
            r#"{"services": {
              "api": {"releasable": true, "active": "blue", "previous": null, "canary": null,
                "backends": {"blue": [{"addr": "127.0.0.2:8000", "name": "api-blue:8000", "healthy": true},
                                      {"addr": "127.0.0.3:8000", "name": "api-blue:8000", "healthy": false}],
                             "green": []},
                "unresolved": {"green": ["api-green:8000"]},
                "inflight": {"blue": 0, "green": 0}, "upgraded": {}}
            }}"#,
        )
        .unwrap();
        let t = text(|w| status(w, &s));
        assert!(
            t.contains(
                "blue: api-blue:8000 (127.0.0.2:8000), api-blue:8000 (127.0.0.3:8000) (down); \
                 green: api-green:8000 (unresolved)"
            ),
            "{t}"
        );
    }

    #[test]
    fn an_alarm_is_a_row_under_its_service() {
        let s: StatusResponse = serde_json::from_str(
            r#"{"services": {
              "web": {"releasable": true, "active": "green", "previous": "blue", "canary": null,
                "backends": {}, "inflight": {}, "upgraded": {}, "alarm": "SLO breached"}
            }}"#,
        )
        .unwrap();
        let t = text(|w| status(w, &s));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[1].starts_with("web "), "{t}");
        assert_eq!(lines[2].trim(), "ALARM: SLO breached", "{t}");
    }

    #[test]
    fn pretty_prints_the_answer_as_it_came() {
        assert_eq!(
            pretty(r#"{"b":1,"new_field":[true]}"#),
            "{\n  \"b\": 1,\n  \"new_field\": [\n    true\n  ]\n}"
        );
        assert_eq!(pretty("bad gateway"), "\"bad gateway\"");
    }

    #[test]
    fn a_closed_stdout_is_an_error_not_a_panic() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let rows = vec![vec!["a".to_string()]];
        let err = table(&mut Closed, &rows).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
