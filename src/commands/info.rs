//! `dfdet info` and `dfdet convert`: describe a checkpoint, or write it as a dfdet folder.

use std::fmt::Write;
use std::path::Path;

use crate::model::Detector;
use crate::model::checkpoint::{Checkpoint, save_dfdet};
use crate::{Error, Result};

/// What this machine computes with: the CPU and its instruction sets, the worker threads, the
/// matrix-product libraries present with their speed here and now, and the one in use.
pub fn describe_system() -> String {
    use crate::model::fused::products::{Kernels, kernels, requested_kernels, speeds};
    let cpu = crate::cpu::CpuInfo::detect();
    let mut s = String::new();
    let mut line = |key: &str, value: String| writeln!(s, "{key:<12} {value}").expect("writing to a String");
    line("cpu", cpu.model.clone());
    line("isa", cpu.isa.join(" "));
    line("threads", rayon::current_num_threads().to_string());
    for (k, gflops) in speeds() {
        line("kernels", format!("{:<9} {gflops:>6.1} GFLOP/s  {}", k.name(), k.describe()));
    }
    let used = kernels();
    let why = match requested_kernels() {
        Some(Ok(k)) => format!("DFDET_KERNELS={}", k.name()),
        Some(Err(e)) => format!("DFDET_KERNELS: {e}; the default"),
        None => {
            "oneDNN on AVX-512 CPUs, else OpenBLAS, where they load; DFDET_KERNELS=gemm|openblas|onednn chooses".into()
        }
    };
    line("in use", format!("{} ({why})", used.name()));
    line("bf16 kernels", crate::model::fused::onednn::bf16_products());
    line("bf16 attn", crate::model::fused::attention::bf16_products().to_string());
    let auto = if crate::model::dtype::native_bf16_products() { "bf16" } else { "f32" };
    line("dtype auto", auto.to_string());
    // dfdet sets these where the environment leaves them unset (`restart_with_quiet_threads`).
    for q in crate::model::fused::threads::QUIET_THREADS {
        let value = std::env::var(q.variable).unwrap_or_else(|_| q.unset.into());
        line(q.key, format!("{value} ({}; {})", q.means, q.variable));
    }
    if !Kernels::available().contains(&Kernels::OpenBlas) {
        line("note", "OpenBLAS not found (Debian: apt install libopenblas0-pthread)".into());
    }
    s
}

/// Backbone, encoder shape, head, tuning method and parameter counts of a loaded detector
/// read from `path`, one `key   value` line each.
pub fn describe(detector: &Detector, path: &Path) -> String {
    let (total, trainable) = (detector.num_params(), detector.num_trainable());
    let spec = &detector.spec;
    let enc = &detector.backbone.encoder;
    let mut s = String::new();
    let mut line = |key: &str, value: String| writeln!(s, "{key:<12} {value}").expect("writing to a String");
    line("weights", path.display().to_string());
    line("backbone", detector.backbone.name.clone());
    line(
        "encoder",
        format!(
            "{}, hidden {}, {} layers, {} heads, MLP {}, patch {}, image {}",
            enc.family(),
            enc.hidden_size(),
            enc.num_layers(),
            enc.num_heads(),
            enc.intermediate_size(),
            enc.patch_size(),
            detector.backbone.pixels.size()[0]
        ),
    );
    line("head", format!("{:?}, {} classes", spec.head, spec.num_classes));
    line("tuning", format!("{:?}", spec.tuning));
    line("parameters", total.to_string());
    line("trainable", format!("{trainable} ({:.4}%)", 100.0 * trainable as f64 / total as f64));
    line("precision", spec.precision.as_deref().unwrap_or("unknown").to_string());
    if let Some(name) = &spec.run_name {
        line("run", name.clone());
    }
    s
}

/// Writes `checkpoint` as a self-contained dfdet folder (`model.safetensors` + `dfdet.json`).
/// An existing non-empty `out` is replaced only with `overwrite`; the folder (or file) the
/// checkpoint was read from never is.
pub fn convert(checkpoint: &Checkpoint, out: &Path, overwrite: bool) -> Result<()> {
    if let (Ok(source), Ok(target)) = (checkpoint.path.canonicalize(), out.canonicalize())
        && (source.starts_with(&target) || target.starts_with(&source))
    {
        return Err(Error::output(
            out,
            format!("would overwrite the checkpoint being converted ({}): write elsewhere", checkpoint.path.display()),
        ));
    }
    let occupied = std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_some()) || out.is_file();
    if occupied && !overwrite {
        return Err(Error::output(
            out,
            "already exists and is not empty: give --force to replace it, or another folder",
        ));
    }
    save_dfdet(out, &checkpoint.spec, &checkpoint.backbone, checkpoint.tensors.tensors())
}
