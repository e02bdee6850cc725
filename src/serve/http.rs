//! The routes, the admission rule and the upload path of `dfdet serve` (axum on tokio).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use burn::prelude::Device;
use serde_json::json;
use tokio::sync::Semaphore;

use super::media::MediaStore;
use super::sniff::sniff;
use crate::commands::FaceSettings;
use crate::commands::predict::annotate::{Annotate, Target};
use crate::commands::predict::{About, Format, PredictSettings, Predictions, predict};
use crate::model::Detector;
use crate::preprocess::video::Sampling;
use crate::progress::Silent;
use crate::{Error, Result};

/// The page at `/`, embedded in the binary.
const PAGE: &str = include_str!("page.html");

/// What keeps the server up under load and hostile input.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest upload, in bytes (413 beyond).
    pub max_upload: u64,
    /// Uploads scored at once (each uses every core through the thread pool).
    pub workers: usize,
    /// Requests that may wait for a worker (uploading included); 429 beyond.
    pub queue: usize,
    /// Answer 504 when scoring takes longer (the scoring itself finishes in the background).
    pub timeout: Duration,
    /// How long annotated media and face crops are kept after their request.
    pub media_ttl: Duration,
    /// Requests whose annotated media are kept at most (the oldest go first).
    pub media_jobs: usize,
}

/// A loaded model and how to serve it.
pub struct Server {
    pub detector: Detector,
    /// The weights as given, for `about` and `/v1/model`.
    pub weights: String,
    /// How uploads are scored: batch size, face finding, faces per frame, photos as photos
    /// (each replaced per request when asked).
    pub settings: PredictSettings,
    pub limits: Limits,
    /// Bearer token required on `/v1/*` when set.
    pub token: Option<String>,
}

struct App {
    server: Server,
    device: Device,
    workers: Arc<Semaphore>,
    /// Requests admitted and not finished (uploading, waiting or scoring).
    admitted: AtomicUsize,
    /// Requests scoring now.
    running: AtomicUsize,
    metrics: Metrics,
    media: MediaStore,
}

/// Request counts and latencies by route and status, for `/metrics`.
#[derive(Default)]
struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    seconds: Mutex<BTreeMap<&'static str, (f64, u64)>>,
}

impl Metrics {
    fn record(&self, route: &'static str, status: StatusCode, seconds: f64) {
        *self.requests.lock().expect("metrics lock").entry((route, status.as_u16())).or_default() += 1;
        let mut s = self.seconds.lock().expect("metrics lock");
        let e = s.entry(route).or_default();
        e.0 += seconds;
        e.1 += 1;
    }
}

/// An error answer: `{"error": {"code", "message"}}` with its status.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

fn api_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError { status, code, message: message.into(), retry_after: None }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        response
    }
}

/// Holds a place among the admitted requests until dropped.
struct Admitted<'a>(&'a AtomicUsize);

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `server` on `addr` until Ctrl-C; `on_listening` hears the bound address (port 0
/// picks a free one).
pub fn serve(server: Server, addr: SocketAddr, on_listening: impl FnOnce(SocketAddr)) -> Result<()> {
    serve_until(server, addr, on_listening, async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// [`serve`] until `stop` completes (or Ctrl-C).
pub fn serve_until(
    server: Server,
    addr: SocketAddr,
    on_listening: impl FnOnce(SocketAddr),
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("starting the server's runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Invalid(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener.local_addr().map_err(|e| Error::Invalid(e.to_string()))?;
        let workers = Arc::new(Semaphore::new(server.limits.workers));
        let media = MediaStore::new(server.limits.media_ttl, server.limits.media_jobs)
            .map_err(|e| Error::Invalid(format!("creating the folder for annotated media: {e}")))?;
        let app = Arc::new(App {
            server,
            device: Device::flex(),
            workers,
            admitted: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            metrics: Metrics::default(),
            media,
        });
        let router = Router::new()
            .route("/", get(page))
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics))
            .route("/v1/model", get(model))
            .route("/v1/predict", post(predict_route).layer(DefaultBodyLimit::disable()))
            .route("/v1/media/{id}/{file}", get(media_route))
            .fallback(not_found)
            .with_state(app);
        on_listening(bound);
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = stop => {}
                }
            })
            .await
            .map_err(|e| Error::Invalid(format!("serving: {e}")))
    })
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok"}))
}

async fn not_found() -> ApiError {
    api_error(StatusCode::NOT_FOUND, "not_found", "no such route: see GET / for the page, POST /v1/predict for the API")
}

fn authorised(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &app.server.token else { return Ok(()) };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match given.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(t) if t == token => Ok(()),
        _ => {
            Err(api_error(StatusCode::UNAUTHORIZED, "unauthorized", "this server needs `Authorization: Bearer TOKEN`"))
        }
    }
}

async fn model(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let start = Instant::now();
    let response = match authorised(&app, &headers) {
        Err(e) => e.into_response(),
        Ok(()) => {
            let s = &app.server;
            let d = &s.detector;
            let e = &d.backbone.encoder;
            axum::Json(json!({
                "dfdet": env!("CARGO_PKG_VERSION"),
                "weights": s.weights,
                "backbone": d.backbone.name,
                "encoder": {"family": e.family(), "hidden": e.hidden_size(), "layers": e.num_layers(),
                            "heads": e.num_heads(), "patch": e.patch_size(), "image": d.backbone.pixels.size()[0]},
                "head": format!("{:?}", d.spec.head),
                "classes": d.spec.num_classes,
                "tuning": format!("{:?}", d.spec.tuning),
                "parameters": d.num_params(),
                "dtype": s.detector.dtype.to_string(),
                "kernels": crate::model::fused::products::kernels().name(),
                "threads": rayon::current_num_threads(),
                "face_detector": s.settings.faces.detector_name(),
                "max_faces": s.settings.max_faces,
                "detect_faces": s.settings.detect_stills,
                "limits": {"max_upload_bytes": s.limits.max_upload, "workers": s.limits.workers,
                           "queue": s.limits.queue, "timeout_s": s.limits.timeout.as_secs_f64(),
                           "media_ttl_s": s.limits.media_ttl.as_secs_f64(), "media_jobs": s.limits.media_jobs},
            }))
            .into_response()
        }
    };
    app.metrics.record("/v1/model", response.status(), start.elapsed().as_secs_f64());
    response
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut text = String::from("# HELP dfdet_requests_total Requests by route and status.\n");
    text += "# TYPE dfdet_requests_total counter\n";
    for ((route, status), n) in app.metrics.requests.lock().expect("metrics lock").iter() {
        text += &format!("dfdet_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n");
    }
    text += "# HELP dfdet_request_seconds Time to answer, by route.\n# TYPE dfdet_request_seconds summary\n";
    for (route, (sum, count)) in app.metrics.seconds.lock().expect("metrics lock").iter() {
        text += &format!("dfdet_request_seconds_sum{{route=\"{route}\"}} {sum}\n");
        text += &format!("dfdet_request_seconds_count{{route=\"{route}\"}} {count}\n");
    }
    let (admitted, running) = (app.admitted.load(Ordering::SeqCst), app.running.load(Ordering::SeqCst));
    text += "# HELP dfdet_queue_depth Requests admitted and not scoring yet (uploading or waiting).\n";
    text += &format!("# TYPE dfdet_queue_depth gauge\ndfdet_queue_depth {}\n", admitted.saturating_sub(running));
    text += "# HELP dfdet_jobs_running Uploads being scored.\n";
    text += &format!("# TYPE dfdet_jobs_running gauge\ndfdet_jobs_running {running}\n");
    text += "# HELP dfdet_media_jobs Requests whose annotated media are kept now.\n";
    text += &format!("# TYPE dfdet_media_jobs gauge\ndfdet_media_jobs {}\n", app.media.len());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn predict_route(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let start = Instant::now();
    let rejected = multipart.as_ref().err().map(|e| e.body_text());
    let mut multipart = multipart.ok();
    let response = match predict_upload(&app, &headers, query.as_deref(), multipart.as_mut(), rejected).await {
        Ok(r) => r,
        Err(e) => {
            // Read (and drop) what is left of a small body, so that a client still sending it
            // gets this answer rather than a broken connection; not from a client that waits
            // for the answer before sending (`Expect: 100-continue`), and never for long.
            let waits = headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if let (Some(m), false) = (multipart.as_mut(), waits) {
                let _ = tokio::time::timeout(Duration::from_secs(5), drain(m, 1 << 20)).await;
            }
            e.into_response()
        }
    };
    app.metrics.record("/v1/predict", response.status(), start.elapsed().as_secs_f64());
    response
}

/// What a request may change: `max_frames=N` or `stride=K`, `max_faces=N`, `detect=BOOL`
/// (find faces in still images), `annotate=BOOL`, `annotate_all=BOOL` (every video frame).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Options {
    sampling: Sampling,
    max_faces: usize,
    detect: bool,
    annotate: bool,
    annotate_all: bool,
}

impl Options {
    /// The server's `settings` as this request changes them for the upload at `path`;
    /// annotated media and crops go to `media` when given.
    fn apply(&self, settings: &PredictSettings, path: &Path, media: Option<&Path>) -> PredictSettings {
        let mut settings = settings.clone();
        settings.faces = FaceSettings { sampling: self.sampling, ..settings.faces };
        settings.max_faces = self.max_faces;
        settings.detect_stills = self.detect;
        settings.annotate = media.filter(|_| self.annotate).map(|dir| Annotate {
            out: Target::File(dir.join(if crate::data::is_video(path) { "annotated.mp4" } else { "annotated.png" })),
            all_frames: self.annotate_all,
            crops: Some(dir.to_path_buf()),
        });
        settings
    }
}

/// The settings a request with `query` scores the file at `path` with, annotating into
/// `media` when it asks for it (the load test's baseline uses this to do what the server does).
pub fn request_settings(
    query: Option<&str>,
    settings: &PredictSettings,
    path: &Path,
    media: Option<&Path>,
) -> Result<PredictSettings> {
    let options = options(query, settings).map_err(|e| Error::Invalid(e.message))?;
    Ok(options.apply(settings, path, media))
}

fn options(query: Option<&str>, server: &PredictSettings) -> Result<Options, ApiError> {
    let bad = |m: String| api_error(StatusCode::BAD_REQUEST, "bad_query", m);
    let mut out = Options {
        sampling: server.faces.sampling,
        max_faces: server.max_faces,
        detect: server.detect_stills,
        annotate: false,
        annotate_all: false,
    };
    let mut seen = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |max: usize| {
            value
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| bad(format!("{key}={value}: a whole number from 1 to {max}")))
        };
        let flag = || match value {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(bad(format!("{key}={value}: true or false"))),
        };
        match key {
            "max_frames" => out.sampling = Sampling::Linspace(number(100_000)?),
            "stride" => out.sampling = Sampling::Stride(number(100_000)?),
            "max_faces" => out.max_faces = number(64)?,
            "detect" => out.detect = flag()?,
            "annotate" => out.annotate = flag()?,
            "annotate_all" => out.annotate_all = flag()?,
            other => {
                return Err(bad(format!(
                    "unknown parameter `{other}`: max_frames or stride, max_faces, detect, annotate, annotate_all"
                )));
            }
        }
        let group = if key == "stride" { "max_frames" } else { key };
        if seen.contains(&group) {
            return Err(bad(format!("`{key}` given twice (or with max_frames and stride both)")));
        }
        seen.push(group);
    }
    // Every frame annotated implies annotating.
    out.annotate |= out.annotate_all;
    Ok(out)
}

/// Reads and drops up to `limit` more bytes of the form.
async fn drain(multipart: &mut Multipart, limit: u64) {
    let mut read = 0u64;
    while let Ok(Some(mut field)) = multipart.next_field().await {
        while let Ok(Some(chunk)) = field.chunk().await {
            read += chunk.len() as u64;
            if read > limit {
                return;
            }
        }
    }
}

async fn predict_upload(
    app: &Arc<App>,
    headers: &HeaderMap,
    query: Option<&str>,
    multipart: Option<&mut Multipart>,
    rejected: Option<String>,
) -> Result<Response, ApiError> {
    authorised(app, headers)?;
    let options = options(query, &app.server.settings)?;
    let limits = &app.server.limits;
    // A body announced as too large is refused before a byte of it is read (the form's own
    // headers and boundaries get 64 KiB).
    let announced = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max_upload + 65_536) {
        return Err(too_large(limits.max_upload));
    }
    // Admission before the upload, so that a full server does not read large bodies first.
    if app.admitted.fetch_add(1, Ordering::SeqCst) >= limits.workers + limits.queue {
        app.admitted.fetch_sub(1, Ordering::SeqCst);
        let mut e = api_error(StatusCode::TOO_MANY_REQUESTS, "busy", "every worker is busy and the queue is full");
        e.retry_after = Some(limits.timeout.as_secs().clamp(1, 30));
        return Err(e);
    }
    let admitted = Admitted(&app.admitted);
    let multipart = multipart.ok_or_else(|| {
        let why = rejected.unwrap_or_default();
        api_error(
            StatusCode::BAD_REQUEST,
            "bad_upload",
            format!("expected multipart/form-data with a `file` field: {why}"),
        )
    })?;
    let (dir, path, name) = receive(multipart, limits.max_upload).await?;

    let media = if options.annotate {
        let made = app.media.create();
        Some(made.map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?)
    } else {
        None
    };
    let settings = options.apply(&app.server.settings, &path, media.as_ref().map(|(_, dir)| dir.as_path()));

    let permit = app.workers.clone().acquire_owned().await.expect("the semaphore is never closed");
    app.running.fetch_add(1, Ordering::SeqCst);
    let job_app = app.clone();
    let job_path = path.clone();
    let job = tokio::task::spawn_blocking(move || {
        let s = &job_app.server;
        let result = predict(&s.detector, &job_app.device, &[job_path], &settings, &mut Silent).map(|mut p| {
            p.about = About::new(&s.weights, &s.detector, &settings);
            p
        });
        job_app.running.fetch_sub(1, Ordering::SeqCst);
        // The upload is deleted, and the worker freed, when the scoring ends, even after a timeout.
        drop((permit, dir));
        result
    });
    let result = tokio::time::timeout(limits.timeout, job).await;
    drop(admitted);
    let failed = |e: ApiError| {
        if let Some((id, _)) = &media {
            app.media.discard(id);
        }
        Err(e)
    };
    let predictions = match result {
        Err(_) => {
            return failed(api_error(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!("scoring took longer than {} s", limits.timeout.as_secs_f64()),
            ));
        }
        Ok(Err(join)) => return failed(api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", join.to_string())),
        Ok(Ok(Err(e))) => return failed(api_error(StatusCode::INTERNAL_SERVER_ERROR, "scoring_failed", e.to_string())),
        Ok(Ok(Ok(p))) => p,
    };
    let mut predictions = renamed(predictions, &path, &name);
    if predictions.frames.is_empty() {
        let why: Vec<String> = predictions.errors.iter().map(|e| format!("{}: {}", e.path, e.reason)).collect();
        return failed(api_error(StatusCode::UNPROCESSABLE_ENTITY, "not_scored", why.join("; ")));
    }
    if let Some((id, dir)) = &media {
        linked(&mut predictions, id, dir);
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], predictions.render(Format::Json)).into_response())
}

/// `predictions` with the job folder's files named by their URLs.
fn linked(p: &mut Predictions, id: &str, dir: &Path) {
    let url = |file: &str| format!("/v1/media/{id}/{file}");
    for m in &mut p.media {
        let file = Path::new(&m.path).strip_prefix(dir).map(|f| f.display().to_string()).unwrap_or_default();
        m.path = url(&file);
    }
    for face in p.frames.iter_mut().flat_map(|f| &mut f.faces) {
        if let Some(c) = &mut face.crop {
            *c = url(c);
        }
    }
}

/// A kept annotated file or face crop (`/v1/media/<id>/<file>`); the id is the key.
async fn media_route(State(app): State<Arc<App>>, UrlPath((id, file)): UrlPath<(String, String)>) -> Response {
    let start = Instant::now();
    let response = match app.media.file(&id, &file) {
        None => api_error(StatusCode::NOT_FOUND, "not_found", "no such media: it may have expired").into_response(),
        Some(path) => match tokio::fs::read(&path).await {
            Err(e) => api_error(StatusCode::NOT_FOUND, "not_found", e.to_string()).into_response(),
            Ok(bytes) => {
                let kind = match path.extension().and_then(|e| e.to_str()) {
                    Some("mp4") => "video/mp4",
                    Some("png") => "image/png",
                    _ => "application/octet-stream",
                };
                ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "private, max-age=600")], bytes).into_response()
            }
        },
    };
    app.metrics.record("/v1/media", response.status(), start.elapsed().as_secs_f64());
    response
}

/// Streams the `file` field into a new temporary folder (deleted when the returned handle is
/// dropped), named by its sniffed type. Returns the folder, the file and the client's name.
async fn receive(multipart: &mut Multipart, max: u64) -> Result<(tempfile::TempDir, PathBuf, String), ApiError> {
    let bad = |m: String| api_error(StatusCode::BAD_REQUEST, "bad_upload", m);
    let internal = |e: std::io::Error| api_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
    while let Some(mut field) = multipart.next_field().await.map_err(|e| bad(e.to_string()))? {
        if field.name() != Some("file") {
            continue;
        }
        let name = display_name(field.file_name().unwrap_or("upload"));
        let dir = tempfile::Builder::new().prefix("dfdet-upload-").tempdir().map_err(internal)?;
        let raw = dir.path().join("upload");
        let mut file = std::fs::File::create(&raw).map_err(internal)?;
        let mut size = 0u64;
        let mut head = Vec::with_capacity(16);
        while let Some(chunk) = field.chunk().await.map_err(|e| bad(format!("the upload broke off: {e}")))? {
            size += chunk.len() as u64;
            if size > max {
                // Read (and drop) a bounded rest, so that a client still sending gets the answer
                // rather than a broken connection.
                let mut rest = 0u64;
                while rest < max.min(64 << 20) {
                    match field.chunk().await {
                        Ok(Some(c)) => rest += c.len() as u64,
                        _ => break,
                    }
                }
                return Err(too_large(max));
            }
            if head.len() < 16 {
                head.extend(chunk.iter().take(16 - head.len()));
            }
            file.write_all(&chunk).map_err(internal)?;
        }
        drop(file);
        let kind = sniff(&head).ok_or_else(|| {
            api_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media",
                format!(
                    "`{name}` is not an image or video dfdet reads (by its content: PNG, JPEG, GIF, BMP, WebP, TIFF; \
                     MP4/MOV, MKV/WebM, AVI, FLV, MPEG)"
                ),
            )
        })?;
        let path = dir.path().join(format!("upload.{}", kind.extension()));
        std::fs::rename(&raw, &path).map_err(internal)?;
        return Ok((dir, path, name));
    }
    Err(bad("no `file` field in the form".into()))
}

fn too_large(max: u64) -> ApiError {
    api_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the upload is larger than this server's limit of {max} bytes"),
    )
}

/// The last component of a client's file name, printable and at most 120 characters.
fn display_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or(raw);
    let clean: String = last.chars().filter(|c| !c.is_control()).take(120).collect();
    if clean.is_empty() { "upload".into() } else { clean }
}

/// `predictions` with the temporary file's path replaced by the client's file name.
fn renamed(mut p: Predictions, path: &Path, name: &str) -> Predictions {
    let tmp = path.display().to_string();
    let folder = path.parent().map(|d| d.display().to_string()).unwrap_or_default();
    let fix = |s: &mut String| {
        if let Some(rest) = s.strip_prefix(&tmp) {
            *s = format!("{name}{rest}");
        } else if *s == folder {
            *s = name.to_string();
        }
    };
    p.frames.iter_mut().for_each(|f| fix(&mut f.path));
    p.videos.iter_mut().for_each(|v| fix(&mut v.video));
    p.media.iter_mut().for_each(|m| fix(&mut m.input));
    p.errors.iter_mut().chain(p.warnings.iter_mut()).for_each(|e| {
        fix(&mut e.path);
        e.reason = e.reason.replace(&tmp, name);
    });
    p
}
