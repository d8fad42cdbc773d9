//! GPU power caps from the live plan, through NVML where this agent's host has NVIDIA GPUs.
//!
//! The plan gives each GPU group a draw; this host is one node of one group (`--gpu-group`,
//! or the plan's only group). Each GPU's limit is the node's planned fraction of its maximum
//! draw applied to the GPU's own maximum (`wattmesh_domain::gpu::caps`), set through NVML and
//! read back: NVML's *enforced* limit is what the report says, so a limit the driver did not
//! take (no root, a GPU that does not support it) is a problem line, never assumed.
//!
//! NVML is loaded at run time (`nvml-wrapper` opens `libnvidia-ml.so`): an agent on a host
//! without the driver builds and runs the same, and reports the caps as not applied and why.

use std::sync::Arc;

use wattmesh_domain::gpu::{GpuLimits, caps};
use wattmesh_proto::plan::{GpuCapReport, PlanDirective};

/// One GPU as its driver describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Gpu {
    pub index: u32,
    pub name: String,
    pub limits: GpuLimits,
}

/// What the caps need of a GPU driver: NVML in production, a fake in unit tests.
pub(crate) trait GpuControl: Send + Sync {
    fn gpus(&self) -> Result<Vec<Gpu>, String>;
    fn set_limit_mw(&self, index: u32, mw: u32) -> Result<(), String>;
    fn enforced_limit_mw(&self, index: u32) -> Result<u32, String>;
}

/// NVML, opened once.
pub(crate) struct Nvml(nvml_wrapper::Nvml);

impl Nvml {
    /// Loads the driver's NVML; the error says why there are no GPUs to cap.
    pub(crate) fn open() -> Result<Arc<dyn GpuControl>, String> {
        nvml_wrapper::Nvml::init()
            .map(|n| Arc::new(Nvml(n)) as Arc<dyn GpuControl>)
            .map_err(|e| format!("no NVML on this host ({e})"))
    }
}

impl GpuControl for Nvml {
    fn gpus(&self) -> Result<Vec<Gpu>, String> {
        let count = self.0.device_count().map_err(|e| e.to_string())?;
        (0..count)
            .map(|index| {
                let d = self.0.device_by_index(index).map_err(|e| e.to_string())?;
                let c = d
                    .power_management_limit_constraints()
                    .map_err(|e| format!("GPU {index}: {e}"))?;
                Ok(Gpu {
                    index,
                    name: d.name().unwrap_or_else(|_| "unknown GPU".into()),
                    limits: GpuLimits {
                        min_mw: c.min_limit,
                        max_mw: c.max_limit,
                    },
                })
            })
            .collect()
    }

    fn set_limit_mw(&self, index: u32, mw: u32) -> Result<(), String> {
        let mut d = self.0.device_by_index(index).map_err(|e| e.to_string())?;
        d.set_power_management_limit(mw)
            .map_err(|e| format!("GPU {index}: cannot set a {mw} mW limit: {e}"))
    }

    fn enforced_limit_mw(&self, index: u32) -> Result<u32, String> {
        let d = self.0.device_by_index(index).map_err(|e| e.to_string())?;
        d.enforced_power_limit()
            .map_err(|e| format!("GPU {index}: cannot read its enforced limit: {e}"))
    }
}

/// What capping this host's GPUs under a plan did.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GpuOutcome {
    pub caps: Vec<GpuCapReport>,
    pub problems: Vec<String>,
}

/// Caps this host's GPUs as `plan` says for its group (`group`, or the plan's only one).
/// `control` is NVML as opened (its error when there is none). A plan without GPU groups
/// does nothing.
pub(crate) fn apply(
    control: &Result<Arc<dyn GpuControl>, String>,
    plan: &PlanDirective,
    group: Option<&str>,
) -> GpuOutcome {
    let mut out = GpuOutcome::default();
    if plan.gpu_groups.iter().all(|g| g.nodes == 0) {
        return out;
    }
    let target = match group {
        Some(name) => plan.gpu_groups.iter().find(|g| g.name == name),
        None if plan.gpu_groups.len() == 1 => plan.gpu_groups.first(),
        None => {
            out.problems.push(format!(
                "GPU power caps not applied: the plan has {} GPU groups; say which this node \
                 belongs to with --gpu-group",
                plan.gpu_groups.len()
            ));
            return out;
        }
    };
    let Some(target) = target else {
        out.problems.push(format!(
            "GPU power caps not applied: the plan has no GPU group {:?}",
            group.unwrap_or_default()
        ));
        return out;
    };
    let control = match control {
        Ok(c) => c,
        Err(why) => {
            out.problems.push(format!(
                "GPU power caps not applied: {why}; the GPU groups' draw is not capped"
            ));
            return out;
        }
    };
    let gpus = match control.gpus() {
        Ok(g) if g.is_empty() => {
            out.problems
                .push("GPU power caps not applied: NVML sees no GPU on this host".into());
            return out;
        }
        Ok(g) => g,
        Err(e) => {
            out.problems.push(format!(
                "GPU power caps not applied: cannot list the GPUs: {e}"
            ));
            return out;
        }
    };
    let limits: Vec<GpuLimits> = gpus.iter().map(|g| g.limits).collect();
    let wanted = match caps(target.kw, target.nodes, target.node_max_kw, &limits) {
        Ok(w) => w,
        Err(e) => {
            out.problems.push(format!(
                "GPU power caps not applied: group {}: {e}",
                target.name
            ));
            return out;
        }
    };
    for (gpu, cap) in gpus.iter().zip(wanted) {
        if let Err(e) = control.set_limit_mw(gpu.index, cap.limit_mw) {
            out.problems.push(e);
        }
        let enforced = control.enforced_limit_mw(gpu.index);
        let enforced_w = match enforced {
            Ok(mw) => {
                if mw > cap.limit_mw {
                    out.problems.push(format!(
                        "GPU {}: enforced limit {} W, above the {} W asked",
                        gpu.index,
                        mw / 1000,
                        cap.limit_mw / 1000
                    ));
                }
                Some(f64::from(mw) / 1000.0)
            }
            Err(e) => {
                out.problems.push(e);
                None
            }
        };
        if cap.above_plan {
            out.problems.push(format!(
                "GPU {}: its lowest limit ({} W) is above the plan's share",
                gpu.index,
                gpu.limits.min_mw / 1000
            ));
        }
        out.caps.push(GpuCapReport {
            index: gpu.index,
            name: gpu.name.clone(),
            limit_w: f64::from(cap.limit_mw) / 1000.0,
            enforced_w,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use wattmesh_proto::plan::GpuTarget;

    /// A driver whose GPUs take any limit within their range, unless `refuse`.
    struct FakeGpus {
        gpus: Vec<Gpu>,
        set: Mutex<Vec<(u32, u32)>>,
        refuse: bool,
    }

    impl GpuControl for FakeGpus {
        fn gpus(&self) -> Result<Vec<Gpu>, String> {
            Ok(self.gpus.clone())
        }
        fn set_limit_mw(&self, index: u32, mw: u32) -> Result<(), String> {
            if self.refuse {
                return Err(format!("GPU {index}: Insufficient Permissions"));
            }
            self.set.lock().unwrap().push((index, mw));
            Ok(())
        }
        fn enforced_limit_mw(&self, index: u32) -> Result<u32, String> {
            let set = self.set.lock().unwrap();
            Ok(set
                .iter()
                .rev()
                .find(|(i, _)| *i == index)
                .map_or(700_000, |(_, mw)| *mw))
        }
    }

    fn h100s(n: u32, refuse: bool) -> Arc<FakeGpus> {
        Arc::new(FakeGpus {
            gpus: (0..n)
                .map(|index| Gpu {
                    index,
                    name: "H100".into(),
                    limits: GpuLimits {
                        min_mw: 200_000,
                        max_mw: 700_000,
                    },
                })
                .collect(),
            set: Mutex::new(Vec::new()),
            refuse,
        })
    }

    fn plan(groups: &[(&str, f64)]) -> PlanDirective {
        PlanDirective {
            plan_id: "p".into(),
            starts_at_ms: 0,
            ends_at_ms: 900_000,
            asic_groups: vec![],
            gpu_groups: groups
                .iter()
                .map(|(name, kw)| GpuTarget {
                    name: (*name).into(),
                    nodes: 4,
                    nodes_on: kw / 10.0,
                    kw: *kw,
                    node_max_kw: 10.0,
                })
                .collect(),
            expected_meter_kw: 0.0,
        }
    }

    fn control(fake: &Arc<FakeGpus>) -> Result<Arc<dyn GpuControl>, String> {
        Ok(fake.clone() as Arc<dyn GpuControl>)
    }

    #[test]
    fn each_gpu_is_capped_at_its_nodes_planned_fraction_and_read_back() {
        let fake = h100s(2, false);
        let out = apply(&control(&fake), &plan(&[("h100", 24.0)]), None);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(*fake.set.lock().unwrap(), [(0, 420_000), (1, 420_000)]);
        assert_eq!(out.caps.len(), 2);
        assert_eq!(
            (out.caps[1].limit_w, out.caps[1].enforced_w),
            (420.0, Some(420.0))
        );
    }

    #[test]
    fn a_limit_the_driver_refused_is_a_problem_with_what_is_enforced() {
        let fake = h100s(1, true);
        let out = apply(&control(&fake), &plan(&[("h100", 24.0)]), None);
        assert!(
            out.problems[0].contains("Insufficient Permissions"),
            "{:?}",
            out.problems
        );
        assert!(
            out.problems[1].contains("enforced limit 700 W"),
            "{:?}",
            out.problems
        );
        assert_eq!(out.caps[0].enforced_w, Some(700.0));
    }

    #[test]
    fn no_nvml_or_no_group_to_follow_is_reported_not_applied() {
        let none: Result<Arc<dyn GpuControl>, String> = Err("no NVML on this host (x)".into());
        let out = apply(&none, &plan(&[("h100", 24.0)]), None);
        assert!(
            out.problems[0].contains("not applied: no NVML"),
            "{:?}",
            out.problems
        );
        let fake = h100s(1, false);
        let two = plan(&[("h100", 24.0), ("a100", 5.0)]);
        let out = apply(&control(&fake), &two, None);
        assert!(
            out.problems[0].contains("--gpu-group"),
            "{:?}",
            out.problems
        );
        let out = apply(&control(&fake), &two, Some("a100"));
        assert!(
            out.problems.iter().any(|p| p.contains("lowest limit")),
            "{:?}",
            out.problems
        );
        assert_eq!(out.caps[0].limit_w, 200.0);
        let out = apply(&control(&fake), &two, Some("v100"));
        assert!(
            out.problems[0].contains("no GPU group \"v100\""),
            "{:?}",
            out.problems
        );
        // A plan without GPUs touches nothing.
        let out = apply(&none, &plan(&[]), None);
        assert_eq!(out, GpuOutcome::default());
    }
}
