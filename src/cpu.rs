//! The CPU a measurement ran on: its model name and the instruction sets that matter to dfdet's
//! matrix kernels, detected at run time (benchmark rows carry them, since the machine that runs
//! a benchmark changes).

/// Model name and instruction sets of this machine's CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// As the OS reports it (`/proc/cpuinfo`'s `model name` on Linux), else the architecture.
    pub model: String,
    /// The relevant instruction sets present, e.g. `avx2 fma avx512f avx512bf16`.
    pub isa: Vec<&'static str>,
}

impl CpuInfo {
    /// This machine's CPU.
    pub fn detect() -> Self {
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, name)| name.split_whitespace().collect::<Vec<_>>().join(" "))
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Self { model, isa: instruction_sets() }
    }

    /// `model (isa isa ...)`.
    pub fn summary(&self) -> String {
        format!("{} ({})", self.model, self.isa.join(" "))
    }
}

#[cfg(target_arch = "x86_64")]
fn instruction_sets() -> Vec<&'static str> {
    let mut isa = Vec::new();
    macro_rules! probe {
        ($($feature:tt),*) => {
            $(if std::arch::is_x86_feature_detected!($feature) { isa.push($feature); })*
        };
    }
    probe!("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avx512bf16", "avx512fp16");
    isa
}

#[cfg(target_arch = "aarch64")]
fn instruction_sets() -> Vec<&'static str> {
    let mut isa = Vec::new();
    macro_rules! probe {
        ($($feature:tt),*) => {
            $(if std::arch::is_aarch64_feature_detected!($feature) { isa.push($feature); })*
        };
    }
    probe!("neon", "bf16", "i8mm", "sve");
    isa
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn instruction_sets() -> Vec<&'static str> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_cpu_is_described() {
        let cpu = CpuInfo::detect();
        assert!(!cpu.model.is_empty());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(cpu.isa.contains(&"avx2"), std::arch::is_x86_feature_detected!("avx2"));
        assert!(cpu.summary().starts_with(&cpu.model));
    }
}
