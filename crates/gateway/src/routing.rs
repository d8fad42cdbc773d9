//! Which replica takes a request: a pure function over a snapshot of candidates, so the policy
//! is tested without sockets. Healthy replicas first, then the fewest outstanding requests,
//! then the id, so equal replicas are chosen deterministically.

/// One replica as the router sees it at the moment of choosing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub outstanding: usize,
    pub healthy: bool,
}

/// The index of the replica to try, skipping `tried`. Unhealthy replicas are chosen only when
/// no healthy one is left: health data can be stale, and trying beats refusing.
pub fn pick(candidates: &[Candidate<'_>], tried: &[&str]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| !tried.contains(&c.id))
        .min_by(|(_, a), (_, b)| {
            b.healthy.cmp(&a.healthy).then(a.outstanding.cmp(&b.outstanding)).then(a.id.cmp(b.id))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, outstanding: usize, healthy: bool) -> Candidate<'_> {
        Candidate { id, outstanding, healthy }
    }

    #[test]
    fn picks_by_health_then_load_then_id() {
        let cases: &[(&[Candidate<'_>], &[&str], Option<&str>)] = &[
            (&[], &[], None),
            (&[c("a", 3, true), c("b", 1, true)], &[], Some("b")),
            (&[c("b", 1, true), c("a", 1, true)], &[], Some("a")),
            (&[c("a", 0, false), c("b", 9, true)], &[], Some("b")),
            (&[c("a", 0, false), c("b", 9, true)], &["b"], Some("a")),
            (&[c("a", 0, true)], &["a"], None),
        ];
        for (cands, tried, want) in cases {
            let got = pick(cands, tried).map(|i| cands[i].id);
            assert_eq!(got, *want, "{cands:?} tried {tried:?}");
        }
    }
}
