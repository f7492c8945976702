//! The `/metrics` endpoint: hyper's HTTP/1 server on the command's own tokio runtime. It
//! answers `GET /metrics` and nothing else (404 for another path, 405 for another method).

use std::{convert::Infallible, net::SocketAddr};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};

use super::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics {addr}: cannot listen there: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The endpoint while it serves; dropping it stops it.
#[derive(Debug)]
pub struct Endpoint {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Where it listens (the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `addr` and serves `metrics` from a task of the current tokio runtime (call it
/// inside one). Binding happens now, so a bad or busy address is an error here.
pub fn serve(addr: SocketAddr, metrics: Metrics) -> Result<Endpoint, MetricsError> {
    let bind = |source| MetricsError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    std_listener.set_nonblocking(true).map_err(bind)?;
    let local = std_listener.local_addr().map_err(bind)?;
    let listener = TcpListener::from_std(std_listener).map_err(bind)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors and the like: try again with the next connection.
                tokio::task::yield_now().await;
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&metrics, &req)) }
                });
                // A client that goes away mid-request is its own business.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Endpoint { addr: local, task })
}

fn respond(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: GET /metrics only\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    metrics.mark_scraped();
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = metrics.encode();
    let (body, content_type) = if openmetrics {
        (text, OPENMETRICS)
    } else {
        (to_prometheus_text(&text), PROMETHEUS_TEXT)
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text from prometheus-client, which
/// writes OpenMetrics only (prometheus/client_rust#51): a counter family's HELP and TYPE
/// name its samples (`x_total`), not the OpenMetrics family name (`x`); `# UNIT` and `# EOF`
/// have no place there. Parsers of the older format (promtool, curl users' scripts) read this.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
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
    fn prometheus_text_names_counter_families_by_their_samples() {
        let om = "# HELP collapse_collapses Outcomes.\n# TYPE collapse_collapses counter\n\
                  collapse_collapses_total{result=\"collapsed\"} 3\n\
                  # HELP collapse_process_anon_bytes Anon.\n# TYPE collapse_process_anon_bytes gauge\n\
                  # UNIT collapse_process_anon_bytes bytes\ncollapse_process_anon_bytes 5\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP collapse_collapses_total Outcomes.\n# TYPE collapse_collapses_total counter\n\
             collapse_collapses_total{result=\"collapsed\"} 3\n\
             # HELP collapse_process_anon_bytes Anon.\n# TYPE collapse_process_anon_bytes gauge\n\
             collapse_process_anon_bytes 5\n"
        );
    }
}
