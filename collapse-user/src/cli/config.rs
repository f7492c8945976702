//! `collapse run --config FILE`: a TOML file whose keys are `run`'s flags without the dashes
//! in front (`max-rate = 64`, `pid = [4242]`, `command = ["redis-server"]` for `-- CMD`).
//! Flags given on the command line win over the file; the file's values go through the same
//! checks as the flags. SIGHUP reads it again (see `super::run`).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{ArgMatches, parser::ValueSource};
use serde::Deserialize;

use super::args::RunArgs;

/// Every key the file may hold; anything else is an error.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct ConfigFile {
    pid: Option<Vec<i32>>,
    cgroup: Option<PathBuf>,
    comm: Option<String>,
    command: Option<Vec<String>>,
    policy: Option<String>,
    max_ptes_none: Option<u16>,
    orders: Option<String>,
    min_order: Option<String>,
    max_ptes_swap: Option<u16>,
    max_ptes_shared: Option<u16>,
    dry_run: Option<bool>,
    interval: Option<f64>,
    duration: Option<f64>,
    max_rate: Option<f64>,
    psi_limit: Option<f64>,
    max_latency_ms: Option<f64>,
    jobs: Option<usize>,
    json: Option<bool>,
    metrics: Option<String>,
    max_regions: Option<u32>,
    ringbuf_kib: Option<u32>,
    max_processes: Option<u32>,
}

/// Reads and parses `path`; a syntax error, an unknown key or a value of the wrong type is
/// one line naming the file and the line.
pub(crate) fn load(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("config {}: cannot read it", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
}

fn parse(text: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let message = e.message().replace('\n', " ");
        match line {
            Some(n) => format!("line {n}: {message}"),
            None => message,
        }
    })
}

/// Which flags the command line gave itself (they win over the file).
pub(crate) struct Given<'a>(pub(crate) Option<&'a ArgMatches>);

impl Given<'_> {
    fn has(&self, id: &str) -> bool {
        self.0
            .is_some_and(|m| m.value_source(id) == Some(ValueSource::CommandLine))
    }
}

/// `args` with the file's values for every flag the command line did not give.
pub(crate) fn apply(file: &ConfigFile, args: &RunArgs, given: &Given<'_>) -> RunArgs {
    let ConfigFile {
        pid,
        cgroup,
        comm,
        command,
        policy,
        max_ptes_none,
        orders,
        min_order,
        max_ptes_swap,
        max_ptes_shared,
        dry_run,
        interval,
        duration,
        max_rate,
        psi_limit,
        max_latency_ms,
        jobs,
        json,
        metrics,
        max_regions,
        ringbuf_kib,
        max_processes,
    } = file.clone();
    let mut out = args.clone();
    // The target is one thing: a target on the command line replaces the file's whole.
    let target_given = ["pids", "cgroup", "comm", "all", "cmd"]
        .iter()
        .any(|id| given.has(id));
    if !target_given {
        out.target.pids = pid.unwrap_or_default();
        out.target.cgroup = cgroup;
        out.target.comm = comm;
        out.target.cmd = command.unwrap_or_default();
    }
    macro_rules! take {
        ($id:literal, $from:ident, $to:expr, $wrap:expr) => {
            if let Some(v) = $from
                && !given.has($id)
            {
                $to = $wrap(v);
            }
        };
    }
    take!("policy", policy, out.policy.policy, Some);
    take!(
        "max_ptes_none",
        max_ptes_none,
        out.policy.max_ptes_none,
        Some
    );
    take!("orders", orders, out.policy.orders, Some);
    take!("min_order", min_order, out.policy.min_order, Some);
    take!(
        "max_ptes_swap",
        max_ptes_swap,
        out.policy.max_ptes_swap,
        Some
    );
    take!(
        "max_ptes_shared",
        max_ptes_shared,
        out.policy.max_ptes_shared,
        Some
    );
    take!("dry_run", dry_run, out.dry_run, std::convert::identity);
    take!("interval", interval, out.interval, std::convert::identity);
    take!("duration", duration, out.duration, Some);
    take!("max_rate", max_rate, out.max_rate, Some);
    take!(
        "psi_limit",
        psi_limit,
        out.psi_limit,
        std::convert::identity
    );
    take!(
        "max_latency_ms",
        max_latency_ms,
        out.max_latency_ms,
        std::convert::identity
    );
    take!("jobs", jobs, out.jobs, std::convert::identity);
    take!("json", json, out.json, std::convert::identity);
    take!("metrics", metrics, out.metrics, Some);
    take!(
        "max_regions",
        max_regions,
        out.capacity.max_regions,
        std::convert::identity
    );
    take!(
        "ringbuf_kib",
        ringbuf_kib,
        out.capacity.ringbuf_kib,
        std::convert::identity
    );
    take!(
        "max_processes",
        max_processes,
        out.capacity.max_processes,
        std::convert::identity
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_mirror_the_flags_and_errors_are_one_line() {
        let f = parse(
            "comm = \"redis-server\"\npolicy = \"pmd\"\nmax-ptes-none = 255\nmax-rate = 64\n\
             metrics = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        assert_eq!(f.comm.as_deref(), Some("redis-server"));
        assert_eq!(f.max_ptes_none, Some(255));
        assert_eq!(f.metrics.as_deref(), Some("127.0.0.1:9464"));
        for (text, want) in [
            (
                "policy = \"pmd\"\nmax-rat = 64\n",
                "line 2: unknown field `max-rat`",
            ),
            ("jobs = \"two\"\n", "line 1: "),
            ("max-ptes-none = [\n", "line 1"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains('\n'), "{err:?}");
        }
    }
}
