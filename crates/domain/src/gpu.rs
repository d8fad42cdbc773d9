//! GPU power caps from a power plan: a GPU group's planned draw spread over its nodes, and one
//! node's share turned into each of its GPUs' power limit.
//!
//! A node's draw is modelled linear in load between idle and `max_kw` (the site file); the
//! plan gives the group `kw`, so each node may draw `kw / nodes`. The GPUs are given the same
//! fraction of their own maximum limit — a node planned at 60 % of its maximum draw caps
//! each GPU at 60 % of its maximum — clamped to the limits the GPU accepts. A GPU whose
//! minimum limit is above its share is capped at its minimum and said so: the node then draws
//! more than planned, and the report must not hide it.

/// What one GPU accepts as a power limit, milliwatts (as NVML counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuLimits {
    pub min_mw: u32,
    pub max_mw: u32,
}

/// One GPU's cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuCap {
    pub limit_mw: u32,
    /// The share asked for was below the GPU's minimum limit.
    pub above_plan: bool,
}

/// Why no caps can be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuCapError {
    #[error("the plan's GPU group has {nodes} nodes and {kw} kW: not a draw to cap at")]
    BadPlan { nodes: u32, kw: f64 },
    #[error("a node's maximum draw of {0} kW is not a positive number")]
    BadNodeMax(f64),
    #[error("GPU {index} accepts {min_mw}–{max_mw} mW: not a range")]
    BadLimits {
        index: usize,
        min_mw: u32,
        max_mw: u32,
    },
}

/// Each GPU's cap on one node of a group planned at `group_kw` over `nodes` nodes of
/// `node_max_kw` each.
pub fn caps(
    group_kw: f64,
    nodes: u32,
    node_max_kw: f64,
    gpus: &[GpuLimits],
) -> Result<Vec<GpuCap>, GpuCapError> {
    if nodes == 0 || !(group_kw.is_finite() && group_kw >= 0.0) {
        return Err(GpuCapError::BadPlan {
            nodes,
            kw: group_kw,
        });
    }
    if !(node_max_kw.is_finite() && node_max_kw > 0.0) {
        return Err(GpuCapError::BadNodeMax(node_max_kw));
    }
    let fraction = (group_kw / f64::from(nodes) / node_max_kw).clamp(0.0, 1.0);
    gpus.iter()
        .enumerate()
        .map(|(index, g)| {
            if g.min_mw > g.max_mw || g.max_mw == 0 {
                return Err(GpuCapError::BadLimits {
                    index,
                    min_mw: g.min_mw,
                    max_mw: g.max_mw,
                });
            }
            // Rounded down: never more than the share.
            let wanted = (f64::from(g.max_mw) * fraction).floor() as u32;
            Ok(GpuCap {
                limit_mw: wanted.clamp(g.min_mw, g.max_mw),
                above_plan: wanted < g.min_mw,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: GpuLimits = GpuLimits {
        min_mw: 200_000,
        max_mw: 700_000,
    };

    #[test]
    fn a_node_planned_at_a_fraction_of_its_maximum_caps_each_gpu_at_that_fraction() {
        // 4 nodes of 10 kW planned at 24 kW: 6 kW each, 60 %: 420 W per H100.
        let got = caps(24.0, 4, 10.0, &[H100; 8]).unwrap();
        assert_eq!(got.len(), 8);
        assert!(
            got.iter().all(|c| c.limit_mw == 420_000 && !c.above_plan),
            "{got:?}"
        );
        // At or above the maximum: the GPUs' own maximum.
        assert_eq!(caps(50.0, 4, 10.0, &[H100]).unwrap()[0].limit_mw, 700_000);
    }

    #[test]
    fn a_share_below_the_gpus_minimum_is_capped_at_the_minimum_and_said_so() {
        let got = caps(4.0, 4, 10.0, &[H100]).unwrap();
        assert_eq!(
            got[0],
            GpuCap {
                limit_mw: 200_000,
                above_plan: true
            }
        );
        let off = caps(0.0, 4, 10.0, &[H100]).unwrap();
        assert!(
            off[0].above_plan,
            "a node planned off still runs at its minimum limit"
        );
    }

    #[test]
    fn broken_inputs_are_errors() {
        assert!(caps(10.0, 0, 10.0, &[H100]).is_err());
        assert!(caps(f64::NAN, 1, 10.0, &[H100]).is_err());
        assert!(caps(-1.0, 1, 10.0, &[H100]).is_err());
        assert!(caps(10.0, 1, 0.0, &[H100]).is_err());
        let upside_down = GpuLimits {
            min_mw: 2,
            max_mw: 1,
        };
        assert!(caps(10.0, 1, 10.0, &[upside_down]).is_err());
        assert_eq!(caps(10.0, 1, 10.0, &[]).unwrap(), []);
    }
}
