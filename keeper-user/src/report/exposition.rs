//! The two text formats a scrape may ask for: OpenMetrics (what Prometheus asks for first, and
//! what the encoder writes) and the classic Prometheus text format 0.0.4 (what `curl` and
//! `promtool check metrics` get, since they do not ask for OpenMetrics). They differ in three
//! places: a counter's HELP and TYPE name the family without `_total` in OpenMetrics, which
//! also has `# UNIT` lines and ends with `# EOF`.

/// The classic format's content type.
pub const TEXT_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";
/// OpenMetrics' content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether the request head's `Accept` asks for OpenMetrics (Prometheus does).
pub fn wants_openmetrics(head: &str) -> bool {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
        .any(|(_, value)| value.contains("application/openmetrics-text"))
}

/// OpenMetrics text rewritten in the classic format.
pub fn to_text_0_0_4(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(&name) && !name.ends_with("_total") {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_total_and_openmetrics_lines_go() {
        let om = "# HELP keeper_evictions Intruders moved.\n# TYPE keeper_evictions counter\n\
                  keeper_evictions_total 3\n# HELP keeper_loadavg Load.\n# TYPE keeper_loadavg gauge\n\
                  # UNIT keeper_loadavg x\nkeeper_loadavg 0.5\n# EOF\n";
        assert_eq!(
            to_text_0_0_4(om),
            "# HELP keeper_evictions_total Intruders moved.\n# TYPE keeper_evictions_total counter\n\
             keeper_evictions_total 3\n# HELP keeper_loadavg Load.\n# TYPE keeper_loadavg gauge\n\
             keeper_loadavg 0.5\n"
        );
    }

    #[test]
    fn prometheus_asks_for_openmetrics_curl_does_not() {
        let prometheus = "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n\r\n";
        assert!(wants_openmetrics(prometheus));
        assert!(!wants_openmetrics(
            "GET /metrics HTTP/1.1\r\nAccept: */*\r\n\r\n"
        ));
        assert!(!wants_openmetrics("GET /metrics HTTP/1.1\r\n\r\n"));
    }
}
