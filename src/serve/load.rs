//! `dfdet bench --serve FILE`: a bounded load test of `dfdet serve` on this machine. The server
//! runs in this process on 127.0.0.1 (a free port); `concurrency` clients upload `FILE`
//! `requests` times in all and the answers' latencies give p50/p95/p99 and the throughput. The
//! baseline, in the same run, is the same scoring called directly (`predict` on the file, one
//! after another), so `served / direct` is what HTTP, the upload, the queue and the JSON cost.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use burn::prelude::Device;
use serde::Serialize;

use super::http::{Server, request_settings, serve_until};
use crate::commands::predict::predict;
use crate::cpu::CpuInfo;
use crate::model::fused::products::kernels;
use crate::progress::Silent;
use crate::{Error, Result};

/// What to send and how hard.
#[derive(Debug, Clone)]
pub struct Load {
    pub file: PathBuf,
    /// Requests in all (after one warm-up request).
    pub requests: usize,
    /// Clients sending at once.
    pub concurrency: usize,
    /// Query string of every request, e.g. `max_frames=8`.
    pub query: String,
    /// Direct `predict` calls timed for the baseline.
    pub baseline_runs: usize,
}

/// One load test's result.
#[derive(Debug, Clone, Serialize)]
pub struct LoadRow {
    pub cpu: String,
    pub isa: String,
    pub kernels: String,
    pub backbone: String,
    pub file: String,
    pub requests: usize,
    pub concurrency: usize,
    pub workers: usize,
    pub threads: usize,
    /// Answers with status 200.
    pub ok: usize,
    /// Other answers or failed connections, by status (0: no answer).
    pub failed: Vec<(u16, usize)>,
    pub seconds: f64,
    pub requests_per_s: f64,
    pub p50_s: f64,
    pub p95_s: f64,
    pub p99_s: f64,
    /// Median seconds of one direct `predict` of the file.
    pub direct_s: f64,
    /// Served throughput over direct throughput (1.0: serving costs nothing).
    pub served_over_direct: f64,
}

/// The `q`-quantile of sorted `xs` (nearest rank).
fn quantile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}

/// A multipart form holding `bytes` as the field `file` named `name`.
fn form(name: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "dfdet-load-7c1e0b";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// One upload: its status (0: no answer) and seconds.
fn send(agent: &ureq::Agent, url: &str, kind: &str, body: &[u8]) -> (u16, f64) {
    let t = Instant::now();
    let status = match agent.post(url).set("Content-Type", kind).send_bytes(body) {
        Ok(r) => {
            let status = r.status();
            let _ = r.into_string();
            status
        }
        Err(ureq::Error::Status(code, r)) => {
            let _ = r.into_string();
            code
        }
        Err(_) => 0,
    };
    (status, t.elapsed().as_secs_f64())
}

/// Runs the load test against `server` (its limits are set so that no request is refused).
pub fn run(mut server: Server, load: &Load) -> Result<LoadRow> {
    let bytes = std::fs::read(&load.file).map_err(|e| Error::io(&load.file, e))?;
    let name = load.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "upload".into());
    let (requests, concurrency) = (load.requests.max(1), load.concurrency.max(1));

    // The baseline: the same scoring as the query asks of the server, called directly.
    let device = Device::flex();
    let media = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let query = load.query.trim_start_matches('?');
    let settings = request_settings(Some(query), &server.settings, &load.file, Some(media.path()))?;
    let direct = crate::commands::bench::median_seconds(load.baseline_runs.max(1), || {
        let _ = predict(&server.detector, &device, std::slice::from_ref(&load.file), &settings, &mut Silent);
    });

    server.limits.queue = server.limits.queue.max(concurrency);
    let workers = server.limits.workers;
    let backbone = server.detector.backbone.name.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
    let serving = std::thread::spawn(move || {
        serve_until(
            server,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            move |a| {
                let _ = addr_tx.send(a);
            },
            async {
                let _ = stop_rx.await;
            },
        )
    });
    let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(a) => a,
        Err(_) => {
            return Err(match serving.join() {
                Ok(Err(e)) => e,
                _ => Error::Invalid("the server did not start".into()),
            });
        }
    };
    let query = if query.is_empty() { String::new() } else { format!("?{query}") };
    let url = format!("http://{addr}/v1/predict{query}");
    let (kind, body) = form(&name, &bytes);
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(3600)).build();
    let (warm, _) = send(&agent, &url, &kind, &body);

    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let answers: Vec<(u16, f64)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..concurrency)
            .map(|_| {
                let (agent, url, kind, body, next) = (agent.clone(), &url, &kind, &body, &next);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::SeqCst) < requests {
                        mine.push(send(&agent, url, kind, body));
                    }
                    mine
                })
            })
            .collect();
        clients.into_iter().flat_map(|c| c.join().expect("a client thread")).collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let _ = serving.join();
    if warm != 200 {
        return Err(Error::Invalid(format!("the warm-up upload of {} was answered {warm}", load.file.display())));
    }

    let mut latencies: Vec<f64> = answers.iter().filter(|(s, _)| *s == 200).map(|(_, t)| *t).collect();
    latencies.sort_by(f64::total_cmp);
    let mut failed: Vec<(u16, usize)> = Vec::new();
    for (status, _) in answers.iter().filter(|(s, _)| *s != 200) {
        match failed.iter_mut().find(|(s, _)| s == status) {
            Some((_, n)) => *n += 1,
            None => failed.push((*status, 1)),
        }
    }
    let cpu = CpuInfo::detect();
    let requests_per_s = latencies.len() as f64 / seconds;
    Ok(LoadRow {
        cpu: cpu.model.clone(),
        isa: cpu.isa.join(" "),
        kernels: kernels().name().to_string(),
        backbone,
        file: name,
        requests,
        concurrency,
        workers,
        threads: rayon::current_num_threads(),
        ok: latencies.len(),
        failed,
        seconds,
        requests_per_s,
        p50_s: quantile(&latencies, 0.50),
        p95_s: quantile(&latencies, 0.95),
        p99_s: quantile(&latencies, 0.99),
        direct_s: direct,
        served_over_direct: requests_per_s * direct,
    })
}

impl LoadRow {
    pub fn render(&self) -> String {
        let failed: Vec<String> = self.failed.iter().map(|(s, n)| format!("{n} x {s}")).collect();
        format!(
            "CPU: {} ({}); f32 products: {}; {} threads\n\
             {} requests of {} ({} at once, {} worker(s)) in {:.1} s: {} ok{}\n\
             throughput {:.2} requests/s; latency p50 {:.3} s, p95 {:.3} s, p99 {:.3} s\n\
             direct predict {:.3} s each; served / direct throughput {:.2}\n",
            self.cpu,
            self.isa,
            self.kernels,
            self.threads,
            self.requests,
            self.file,
            self.concurrency,
            self.workers,
            self.seconds,
            self.ok,
            if failed.is_empty() { String::new() } else { format!(", failed: {}", failed.join(", ")) },
            self.requests_per_s,
            self.p50_s,
            self.p95_s,
            self.p99_s,
            self.direct_s,
            self.served_over_direct,
        )
    }

    pub fn render_csv(&self) -> String {
        format!(
            "cpu,isa,kernels,backbone,file,requests,concurrency,workers,threads,ok,seconds,requests_per_s,p50_s,p95_s,p99_s,direct_s,served_over_direct\n\
             \"{}\",{},{},{},{},{},{},{},{},{},{:.3},{:.4},{:.4},{:.4},{:.4},{:.4},{:.3}\n",
            self.cpu.replace('"', "\"\""),
            self.isa,
            self.kernels,
            self.backbone,
            self.file,
            self.requests,
            self.concurrency,
            self.workers,
            self.threads,
            self.ok,
            self.seconds,
            self.requests_per_s,
            self.p50_s,
            self.p95_s,
            self.p99_s,
            self.direct_s,
            self.served_over_direct,
        )
    }
}

/// Checks that `file` exists before a model is built for nothing.
pub fn check_file(file: &Path) -> Result<()> {
    if file.is_file() { Ok(()) } else { Err(Error::Invalid(format!("{}: no such file", file.display()))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let xs: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((quantile(&xs, 0.5), quantile(&xs, 0.95), quantile(&xs, 0.99)), (50.0, 95.0, 99.0));
        assert_eq!(quantile(&[3.0], 0.95), 3.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
