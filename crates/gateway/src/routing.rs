//! Which replica takes a request: a pure function over a snapshot of candidates, so the policy
//! is tested without sockets or clocks. Replicas dedicated to another tenant are never used;
//! unhealthy replicas are skipped. Replicas on a site shedding inference for a grid
//! demand-response event are used for interactive requests only when no other replica can
//! take them (the traffic moves to other sites and regions), and never for deferrable (batch)
//! ones. Then a tenant's own dedicated replicas come before shared ones; among the rest the
//! one with the fewest outstanding requests wins, and ties go to the smallest id, so equal
//! replicas are chosen deterministically.

/// One replica as the router sees it at the moment of choosing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    /// Requests in flight to it from this gateway, streams being relayed included.
    pub outstanding: usize,
    /// False while ejected (failed connect, 503, failed health probe).
    pub healthy: bool,
    pub access: Access,
    /// Its site is shedding inference for a demand-response event.
    pub shedding: bool,
}

/// Whose a replica is, from the caller's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Of a shared deployment.
    Shared,
    /// Of a deployment dedicated to the caller's tenant: what it pays for, used first.
    Own,
    /// Of a deployment dedicated to another tenant: never used.
    Foreign,
}

impl Access {
    /// The access of a replica dedicated to `dedicated_to` for a caller of `tenant`.
    pub fn of(dedicated_to: Option<&str>, tenant: &str) -> Self {
        match dedicated_to {
            None => Access::Shared,
            Some(t) if t == tenant => Access::Own,
            Some(_) => Access::Foreign,
        }
    }
}

/// The index of the replica to try, skipping unhealthy ones and those already `tried` for
/// this request; `None` when no replica can take it. A `deferrable` (batch) request never
/// goes to a shedding site.
pub fn pick(candidates: &[Candidate<'_>], tried: &[&str], deferrable: bool) -> Option<usize> {
    let usable = |c: &Candidate<'_>| {
        c.healthy
            && !tried.contains(&c.id)
            && c.access != Access::Foreign
            && !(deferrable && c.shedding)
    };
    let steady_first = candidates.iter().any(|c| !c.shedding && usable(c));
    let tier = |c: &Candidate<'_>| usable(c) && (!steady_first || !c.shedding);
    let own_first = candidates
        .iter()
        .any(|c| c.access == Access::Own && tier(c));
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| tier(c))
        .filter(|(_, c)| !own_first || c.access == Access::Own)
        .min_by(|(_, a), (_, b)| a.outstanding.cmp(&b.outstanding).then(a.id.cmp(b.id)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, outstanding: usize, healthy: bool) -> Candidate<'_> {
        Candidate {
            id,
            outstanding,
            healthy,
            access: Access::Shared,
            shedding: false,
        }
    }

    fn shedding(c: Candidate<'_>) -> Candidate<'_> {
        Candidate {
            shedding: true,
            ..c
        }
    }

    fn with(access: Access, c: Candidate<'_>) -> Candidate<'_> {
        Candidate { access, ..c }
    }

    /// (name, candidates, already tried, expected id)
    type Case<'a> = (&'a str, Vec<Candidate<'a>>, Vec<&'a str>, Option<&'a str>);

    #[test]
    fn access_follows_the_dedication() {
        assert_eq!(Access::of(None, "acme"), Access::Shared);
        assert_eq!(Access::of(Some("acme"), "acme"), Access::Own);
        assert_eq!(Access::of(Some("globex"), "acme"), Access::Foreign);
    }

    #[test]
    fn picks_fewest_outstanding_among_healthy_then_smallest_id() {
        #[rustfmt::skip]
        let cases: Vec<Case<'_>> = vec![
            ("no replicas", vec![], vec![], None),
            ("fewest outstanding", vec![c("a", 3, true), c("b", 1, true)], vec![], Some("b")),
            ("zero beats one", vec![c("a", 1, true), c("b", 0, true), c("c", 2, true)], vec![], Some("b")),
            ("tie goes to smallest id", vec![c("b", 1, true), c("a", 1, true)], vec![], Some("a")),
            ("tie order independent", vec![c("a", 1, true), c("b", 1, true)], vec![], Some("a")),
            ("unhealthy skipped even if idle", vec![c("a", 0, false), c("b", 9, true)], vec![], Some("b")),
            ("all unhealthy", vec![c("a", 0, false), c("b", 0, false)], vec![], None),
            ("tried skipped", vec![c("a", 0, true), c("b", 5, true)], vec!["a"], Some("b")),
            ("tried and unhealthy leave none", vec![c("a", 0, false), c("b", 9, true)], vec!["b"], None),
            ("only one, tried", vec![c("a", 0, true)], vec!["a"], None),
            ("another tenant's replica is never used", vec![with(Access::Foreign, c("a", 0, true))], vec![], None),
            ("own replicas first, even busier", vec![c("a", 0, true), with(Access::Own, c("b", 9, true))], vec![], Some("b")),
            ("shared when own are down", vec![c("a", 5, true), with(Access::Own, c("b", 0, false))], vec![], Some("a")),
            ("shared when own were tried", vec![c("a", 5, true), with(Access::Own, c("b", 0, true))], vec!["b"], Some("a")),
            ("foreign skipped for shared", vec![with(Access::Foreign, c("a", 0, true)), c("b", 3, true)], vec![], Some("b")),
        ];
        for (name, cands, tried, want) in &cases {
            let got = pick(cands, tried, false).map(|i| cands[i].id);
            assert_eq!(got, *want, "{name}: {cands:?} tried {tried:?}");
        }
    }

    /// A case: its name, the candidates, those tried, whether the request is deferrable, and
    /// the replica it should go to.
    type ShedCase<'a> = (
        &'a str,
        Vec<Candidate<'a>>,
        Vec<&'a str>,
        bool,
        Option<&'a str>,
    );

    #[test]
    fn shedding_sites_take_interactive_traffic_last_and_batch_never() {
        #[rustfmt::skip]
        let cases: Vec<ShedCase<'_>> = vec![
            ("steady before shedding, even busier", vec![shedding(c("a", 0, true)), c("b", 9, true)], vec![], false, Some("b")),
            ("shedding when nothing else is left", vec![shedding(c("a", 3, true)), c("b", 0, false)], vec![], false, Some("a")),
            ("shedding after the steady one was tried", vec![shedding(c("a", 3, true)), c("b", 0, true)], vec!["b"], false, Some("a")),
            ("batch never to a shedding site", vec![shedding(c("a", 0, true)), c("b", 0, false)], vec![], true, None),
            ("batch to a steady site", vec![shedding(c("a", 0, true)), c("b", 4, true)], vec![], true, Some("b")),
            ("steady shared before shedding own", vec![with(Access::Own, shedding(c("a", 0, true))), c("b", 4, true)], vec![], false, Some("b")),
            ("own first among steady", vec![with(Access::Own, c("a", 4, true)), c("b", 0, true), shedding(c("c", 0, true))], vec![], false, Some("a")),
            ("own first among shedding", vec![with(Access::Own, shedding(c("a", 4, true))), shedding(c("b", 0, true))], vec![], false, Some("a")),
        ];
        for (name, cands, tried, deferrable, want) in &cases {
            let got = pick(cands, tried, *deferrable).map(|i| cands[i].id);
            assert_eq!(got, *want, "{name}: {cands:?} tried {tried:?}");
        }
    }

    #[test]
    fn same_input_same_choice() {
        let cands = [c("r2", 1, true), c("r1", 1, true), c("r3", 0, false)];
        let first = pick(&cands, &[], false);
        for _ in 0..10 {
            assert_eq!(pick(&cands, &[], false), first);
        }
        assert_eq!(first.map(|i| cands[i].id), Some("r1"));
    }
}
