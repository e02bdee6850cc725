//! `dfdet serve`: the detector behind an HTTP API and a web page, for people who check
//! suspicious media by uploading a file rather than running commands.
//!
//! ```text
//! GET  /             the page (embedded; no CDN): pick or drop a file, see the verdict
//! POST /v1/predict   multipart field `file` (an image or a video); query `max_frames` or
//!                    `stride`, `max_faces`, `detect`, `annotate`, `annotate_all`
//!                    -> the JSON document of `dfdet predict --format json`, with the URLs of
//!                    the annotated media and face crops when `annotate` is asked for
//! GET  /v1/media/ID/FILE  an annotated image or video, or a face crop, kept for a while
//! GET  /v1/model     backbone, head, tuning, parameter counts, dtype, matrix-product library
//! GET  /healthz      {"status": "ok"}
//! GET  /metrics      Prometheus text: requests by route and status, latency, queue depth
//! ```
//!
//! The model is loaded once. Uploads are streamed to a temporary folder (never whole in memory),
//! their type is read from their first bytes (not from the file name), and the folder is
//! deleted when the request ends, however it ends (a client that disconnects included). At
//! most `workers` uploads are scored at once and `queue` more wait; beyond that a request gets
//! 429 with `Retry-After`. Errors are `{"error": {"code", "message"}}`, 4xx for the client's fault.

mod http;
pub mod load;
mod media;
mod sniff;

pub use http::{Limits, Server, serve, serve_until};
pub use sniff::{Kind, sniff};
