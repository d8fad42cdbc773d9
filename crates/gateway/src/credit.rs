//! Prepaid credit, admitted locally. For each prepaid tenant the gateway holds a lease: a
//! running total of credit the control plane granted it, against which it reserves each
//! request's worst-case cost before forwarding and settles the real cost when the request
//! ends. Only when the lease runs short does it ask the control plane for more (one round
//! trip per slice, not per request), and it tops the lease up in the background before then.
//!
//! Why no tenant overspends: the control plane never grants more than the tenant's balance
//! minus what all gateways hold, and a gateway never reserves more than it was granted. What
//! the gateway has spent is durable in its spool, in the same transaction as the usage events
//! (`Spool::append`), so a restarted gateway knows it too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rust_decimal::Decimal;
use wattmesh_proto::usage::{LeaseGrant, LeaseRequest};

/// How a gateway gets more credit: the control plane over HTTP in production.
pub trait Leaser: Send + Sync + std::fmt::Debug + 'static {
    fn lease(
        &self,
        request: LeaseRequest,
    ) -> futures::future::BoxFuture<'static, Result<LeaseGrant, String>>;
}

/// `POST {control}/api/v1/gateway/leases` with the gateway token.
#[derive(Clone)]
pub struct ControlLeaser {
    pub http: reqwest::Client,
    pub control_url: String,
    pub token: String,
}

impl std::fmt::Debug for ControlLeaser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlLeaser")
            .field("control_url", &self.control_url)
            .finish_non_exhaustive()
    }
}

/// A lease call that takes longer fails the request waiting on it (503), not the gateway.
const LEASE_TIMEOUT: Duration = Duration::from_secs(5);

impl Leaser for ControlLeaser {
    fn lease(
        &self,
        request: LeaseRequest,
    ) -> futures::future::BoxFuture<'static, Result<LeaseGrant, String>> {
        let this = self.clone();
        Box::pin(async move {
            let url = format!(
                "{}/api/v1/gateway/leases",
                this.control_url.trim_end_matches('/')
            );
            let resp = this
                .http
                .post(&url)
                .bearer_auth(&this.token)
                .timeout(LEASE_TIMEOUT)
                .json(&request)
                .send()
                .await
                .map_err(|e| format!("leasing credit: {e}"))?;
            if !resp.status().is_success() {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                return Err(format!("leasing credit: {status}: {text}"));
            }
            resp.json::<LeaseGrant>()
                .await
                .map_err(|e| format!("leasing credit: {e}"))
        })
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Allowance {
    granted: Decimal,
    spent: Decimal,
    reserved: Decimal,
    /// The last grant's size: when what is left falls below half of it, renew early.
    last_increment: Decimal,
}

impl Allowance {
    fn available(&self) -> Decimal {
        self.granted - self.spent - self.reserved
    }

    fn absorb(&mut self, grant: &LeaseGrant) {
        let before = self.granted;
        self.granted = self.granted.max(grant.granted_total);
        // The control plane's count lags ours (usage not shipped yet), unless ours was lost.
        self.spent = self.spent.max(grant.spent_total);
        if self.granted > before {
            self.last_increment = self.granted - before;
        }
    }
}

/// Why a request could not be covered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreditError {
    /// The tenant's credit is spent (or held by other gateways).
    #[error("insufficient credit")]
    Exhausted,
    /// More credit was needed and the control plane could not be asked.
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug)]
pub struct Credit {
    tenants: Mutex<HashMap<String, Allowance>>,
    /// One lease call per tenant at a time; waiters re-check what it brought.
    leasing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    leaser: Arc<dyn Leaser>,
}

/// Credit reserved for one request; [`Reservation::settle`] turns it into what was spent.
/// Dropped unsettled, it is released (the request never reached a replica).
#[derive(Debug)]
pub struct Reservation {
    credit: Arc<Credit>,
    tenant: String,
    amount: Decimal,
    done: bool,
}

impl Credit {
    /// `spent`: what this gateway spent per tenant before it restarted (from its spool).
    pub fn new(spent: HashMap<String, Decimal>, leaser: Arc<dyn Leaser>) -> Arc<Self> {
        let tenants = spent
            .into_iter()
            .map(|(t, spent)| {
                (
                    t,
                    Allowance {
                        spent,
                        ..Allowance::default()
                    },
                )
            })
            .collect();
        Arc::new(Self {
            tenants: Mutex::new(tenants),
            leasing: Mutex::default(),
            leaser,
        })
    }

    fn with<R>(&self, tenant: &str, f: impl FnOnce(&mut Allowance) -> R) -> R {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        f(tenants.entry(tenant.to_owned()).or_default())
    }

    fn lease_lock(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.leasing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// Reserves `worst` of `tenant`'s credit, leasing more from the control plane when what
    /// this gateway holds falls short.
    pub async fn reserve(
        self: &Arc<Self>,
        tenant: &str,
        worst: Decimal,
    ) -> Result<Reservation, CreditError> {
        if let Some(r) = self.try_reserve(tenant, worst) {
            return Ok(r);
        }
        let lock = self.lease_lock(tenant);
        let _leasing = lock.lock().await;
        // Another request may have leased while this one waited.
        if let Some(r) = self.try_reserve(tenant, worst) {
            return Ok(r);
        }
        let need = worst - self.with(tenant, |a| a.available()).max(Decimal::ZERO);
        let grant = self
            .leaser
            .lease(LeaseRequest {
                tenant: tenant.to_owned(),
                need,
            })
            .await
            .map_err(CreditError::Unavailable)?;
        self.with(tenant, |a| a.absorb(&grant));
        self.try_reserve(tenant, worst)
            .ok_or(CreditError::Exhausted)
    }

    fn try_reserve(self: &Arc<Self>, tenant: &str, worst: Decimal) -> Option<Reservation> {
        let (fits, renew) = self.with(tenant, |a| {
            if a.available() < worst {
                return (false, false);
            }
            a.reserved += worst;
            let low = a.available() < a.last_increment / Decimal::TWO;
            (true, low)
        });
        if !fits {
            return None;
        }
        if renew {
            self.renew_in_background(tenant);
        }
        Some(Reservation {
            credit: self.clone(),
            tenant: tenant.to_owned(),
            amount: worst,
            done: false,
        })
    }

    /// Tops the lease up without making a request wait, unless a lease call is already out.
    fn renew_in_background(self: &Arc<Self>, tenant: &str) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let this = self.clone();
        let tenant = tenant.to_owned();
        handle.spawn(async move {
            let lock = this.lease_lock(&tenant);
            let Ok(_leasing) = lock.try_lock() else {
                return;
            };
            let need = this.with(&tenant, |a| a.last_increment);
            match this
                .leaser
                .lease(LeaseRequest {
                    tenant: tenant.clone(),
                    need,
                })
                .await
            {
                Ok(grant) => this.with(&tenant, |a| a.absorb(&grant)),
                Err(e) => tracing::warn!(%tenant, "renewing a credit lease: {e}"),
            }
        });
    }

    /// What this gateway may still reserve for `tenant` now.
    pub fn available(&self, tenant: &str) -> Decimal {
        self.with(tenant, |a| a.available())
    }
}

impl Reservation {
    /// The request cost `actual`: it counts as spent and the reservation is released.
    pub fn settle(mut self, actual: Decimal) {
        self.done = true;
        self.credit.with(&self.tenant, |a| {
            a.reserved -= self.amount;
            a.spent += actual;
        });
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            self.credit
                .with(&self.tenant, |a| a.reserved -= self.amount);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A control plane with a balance, granting as the real one does.
    #[derive(Debug)]
    struct FakeBank {
        balance: Mutex<Decimal>,
        granted: Mutex<Decimal>,
        calls: AtomicUsize,
    }

    impl Leaser for Arc<FakeBank> {
        fn lease(
            &self,
            request: LeaseRequest,
        ) -> futures::future::BoxFuture<'static, Result<LeaseGrant, String>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let balance = *self.balance.lock().unwrap();
            let mut granted = self.granted.lock().unwrap();
            let more = wattmesh_domain::pricing::lease_grant(wattmesh_domain::pricing::LeaseView {
                balance,
                held_by_gateways: *granted,
                need: request.need,
            });
            *granted += more;
            let grant = LeaseGrant {
                tenant: request.tenant,
                granted_total: *granted,
                spent_total: Decimal::ZERO,
            };
            Box::pin(async move { Ok(grant) })
        }
    }

    fn bank(balance: i64) -> Arc<FakeBank> {
        Arc::new(FakeBank {
            balance: Mutex::new(Decimal::from(balance)),
            granted: Mutex::new(Decimal::ZERO),
            calls: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn spends_up_to_the_balance_and_no_further() {
        let bank = bank(10);
        let credit = Credit::new(HashMap::new(), Arc::new(bank.clone()));
        let mut spent = Decimal::ZERO;
        loop {
            match credit.reserve("t", Decimal::ONE).await {
                Ok(r) => {
                    r.settle(Decimal::ONE);
                    spent += Decimal::ONE;
                }
                Err(e) => {
                    assert_eq!(e, CreditError::Exhausted);
                    break;
                }
            }
            assert!(spent <= Decimal::from(10));
        }
        assert_eq!(spent, Decimal::from(10));
        // Leased in slices, not per request.
        assert!(bank.calls.load(Ordering::SeqCst) < 10);
    }

    #[tokio::test]
    async fn unsettled_reservations_are_released_and_settled_ones_count_real_cost() {
        let credit = Credit::new(HashMap::new(), Arc::new(bank(4)));
        let r = credit.reserve("t", Decimal::from(4)).await.unwrap();
        assert_eq!(credit.available("t"), Decimal::ZERO);
        drop(r);
        assert_eq!(credit.available("t"), Decimal::from(4));
        let r = credit.reserve("t", Decimal::from(4)).await.unwrap();
        r.settle(Decimal::ONE);
        assert_eq!(credit.available("t"), Decimal::from(3));
    }

    #[tokio::test]
    async fn a_restarted_gateway_remembers_what_it_spent() {
        let bank = bank(10);
        let credit = Credit::new(HashMap::new(), Arc::new(bank.clone()));
        credit
            .reserve("t", Decimal::from(10))
            .await
            .unwrap()
            .settle(Decimal::from(10));
        // The same gateway restarts with its spool's spend total: the bank has granted it
        // everything, and nothing is left to spend.
        let restarted = Credit::new(
            HashMap::from([("t".to_owned(), Decimal::from(10))]),
            Arc::new(bank),
        );
        assert_eq!(
            restarted.reserve("t", Decimal::ONE).await.unwrap_err(),
            CreditError::Exhausted
        );
    }
}
