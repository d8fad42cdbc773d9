//! The simulator's side of the API: a request's bytes in, a reply's bytes out, for one unit.
//! Pure over the unit's state and the time passed in, so the TCP server and the in-process
//! [`super::SimFleet::call`] share it.
//!
//! Replies have the shapes of FACTS.md: CGMiner's `summary`/`devs`/`pools`, Antminer's
//! `stats` (a header object, then `chain_rateN`/`temp2_N`/`fanN`), LuxOS's `version`
//! (`LUXminer`), `power`, `profiles`, and its session commands. Where LuxOS's own status
//! codes are not public, the codes below are the simulator's choice and say so.

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::shared::UnitState;
use super::unit::Phase;
use crate::api::{Reply, Request, code, encode_replies};
use crate::luxos::Curtail;

/// The simulator's reply codes where it has to pick one (LuxOS does not publish all of its).
pub mod sim_code {
    /// CGMiner's "Invalid JSON".
    pub const INVALID_JSON: i64 = 23;
    /// CGMiner's `version`.
    pub const VERSION: i64 = 22;
    /// The simulator's codes for LuxOS replies.
    pub const POWER: i64 = 300;
    pub const PROFILES: i64 = 301;
    pub const LOGON: i64 = 302;
    pub const LOGOFF: i64 = 303;
    pub const CURTAIL: i64 = 304;
    pub const PROFILESET: i64 = 305;
    /// A command that needs a parameter got none, or an unreadable one.
    pub const BAD_PARAMETER: i64 = 400;
}

/// Seconds a session lasts without being used before another `logon` may take it (LuxOS times
/// sessions out; the length is the simulator's assumption).
pub const SESSION_IDLE_S: f64 = 300.0;
/// The `When` of simulated time zero.
const EPOCH: i64 = 1_700_000_000;
/// Hashboards per unit (three chains, as on an Antminer).
const CHAINS: usize = 3;
/// Share difficulty of the simulated pool: accepted shares = hashes / (difficulty × 2^32).
const SHARE_DIFFICULTY: f64 = 65_536.0;
/// What joined requests may contain: reports, as in CGMiner (privileged commands stand alone).
const REPORTS: [&str; 7] = [
    "summary", "stats", "devs", "pools", "version", "power", "profiles",
];
const PRIVILEGED: [&str; 4] = ["logon", "logoff", "curtail", "profileset"];

/// Context of one request: the times it is answered at.
pub(crate) struct Now {
    pub instant: Instant,
    pub sim_s: f64,
}

/// Answers the request in `bytes` for `unit`. Never panics: a bad request gets an error reply.
pub(crate) fn handle(unit: &mut UnitState, now: &Now, bytes: &[u8]) -> Vec<u8> {
    let when = EPOCH + now.sim_s as i64;
    let request = match Request::decode(bytes) {
        Ok(request) => request,
        Err(crate::api::ApiError::BadCommand(name)) => {
            return single(Reply::error(
                code::INVALID_COMMAND,
                &format!("Invalid command {name:?}"),
                when,
            ));
        }
        Err(e) => {
            return single(Reply::error(
                sim_code::INVALID_JSON,
                &format!("Invalid JSON: {e}"),
                when,
            ));
        }
    };
    let commands = request.commands();
    if let Some(bad) = commands
        .iter()
        .find(|c| !REPORTS.contains(c) && !PRIVILEGED.contains(c))
    {
        return single(Reply::error(
            code::INVALID_COMMAND,
            &format!("Invalid command {bad:?}"),
            when,
        ));
    }
    if commands.len() > 1
        && let Some(privileged) = commands.iter().find(|c| PRIVILEGED.contains(c))
    {
        return single(Reply::error(
            code::ACCESS_DENIED,
            &format!("Access denied to '{privileged}' command in a joined request"),
            when,
        ));
    }
    let parameter = request.parameter.as_deref();
    let replies = commands
        .iter()
        .map(|command| answer(unit, now, when, command, parameter))
        .collect();
    encode_replies(&commands, replies)
}

/// An error reply to a request that could not be read.
pub(crate) fn refuse(now: &Now, code: i64, msg: &str) -> Vec<u8> {
    single(Reply::error(code, msg, EPOCH + now.sim_s as i64))
}

fn single(reply: Reply) -> Vec<u8> {
    encode_replies(&[], vec![reply])
}

fn section(name: &str, items: Value) -> Map<String, Value> {
    let mut sections = Map::new();
    sections.insert(name.to_owned(), items);
    sections
}

fn answer(
    unit: &mut UnitState,
    now: &Now,
    when: i64,
    command: &str,
    parameter: Option<&str>,
) -> Reply {
    let t = now.sim_s;
    let u = &unit.unit;
    let mhs = u.ths(t) * 1e6;
    match command {
        "summary" => {
            let th = u.total_th(t);
            let elapsed = u.elapsed_s(t);
            let av = if elapsed > 0.0 {
                th / elapsed * 1e6
            } else {
                0.0
            };
            let accepted = (th * 1e12 / (SHARE_DIFFICULTY * 4_294_967_296.0)).floor();
            let summary = json!([{
                "Elapsed": elapsed.floor(), "MHS av": av, "MHS 5s": mhs, "MHS 1m": mhs,
                "MHS 5m": mhs, "MHS 15m": mhs, "Accepted": accepted, "Rejected": 0,
                "Hardware Errors": 0, "Best Share": 0,
            }]);
            Reply::ok(code::SUMMARY, "Summary", when, section("SUMMARY", summary))
        }
        "stats" => {
            let mut chains = Map::new();
            let fan = (1_000.0 + 5_000.0 * u.watts(t) / u.model().max_w).round();
            for n in 1..=CHAINS {
                chains.insert(
                    format!("chain_rate{n}"),
                    json!(format!("{:.2}", mhs / 1e3 / CHAINS as f64)),
                );
                chains.insert(format!("temp2_{n}"), json!(u.chip_c(t).round()));
            }
            for n in 1..=4 {
                chains.insert(format!("fan{n}"), json!(fan));
            }
            let header = json!({"STATS": 0, "ID": "BTM0", "Elapsed": u.elapsed_s(t).floor(), "Type": u.model().name});
            let stats = Value::Array(vec![header, Value::Object(chains)]);
            Reply::ok(code::STATS, "CGMiner stats", when, section("STATS", stats))
        }
        "devs" => {
            let alive = matches!(u.phase(t), Phase::Hashing | Phase::RampingUp) && mhs > 0.0;
            let devs: Vec<Value> = (0..CHAINS)
                .map(|i| {
                    json!({
                        "ASC": i, "Name": "BTM", "ID": i, "Enabled": "Y",
                        "Status": if alive { "Alive" } else { "Dead" },
                        "Temperature": u.chip_c(t).round(),
                        "MHS av": mhs / CHAINS as f64, "MHS 5s": mhs / CHAINS as f64,
                    })
                })
                .collect();
            Reply::ok(
                code::DEVS,
                &format!("{CHAINS} ASC(s)"),
                when,
                section("DEVS", Value::Array(devs)),
            )
        }
        "pools" => {
            let pools = json!([{
                "POOL": 0, "URL": "stratum+tcp://pool.sim.invalid:3333", "Status": "Alive",
                "Priority": 0, "User": "wattmesh.sim", "Stratum Active": true,
            }]);
            Reply::ok(code::POOLS, "1 Pool(s)", when, section("POOLS", pools))
        }
        "version" => {
            let version = json!([{"LUXminer": "2025.1.1-wattmesh-sim", "API": "3.7", "Type": u.model().name}]);
            let mut reply = Reply::ok(
                sim_code::VERSION,
                "LUXminer versions",
                when,
                section("VERSION", version),
            );
            reply.status.description = "LUXminer 2025.1.1 (wattmesh-sim)".into();
            reply
        }
        "power" => {
            let power = json!([{"Watts": u.watts(t).round(), "PSU": true}]);
            Reply::ok(sim_code::POWER, "Power", when, section("POWER", power))
        }
        "profiles" => {
            let profiles: Vec<Value> = u
                .profiles()
                .iter()
                .map(|p| json!({"Profile Name": p.name, "Watts": p.watts.round(), "Hashrate": u.model().hashrate_ths(p.watts)}))
                .collect();
            Reply::ok(
                sim_code::PROFILES,
                "Profiles",
                when,
                section("PROFILES", Value::Array(profiles)),
            )
        }
        "logon" => logon(unit, t, when),
        privileged => session_command(unit, now, when, privileged, parameter),
    }
}

fn logon(unit: &mut UnitState, t: f64, when: i64) -> Reply {
    if let Some(session) = &unit.session
        && t - session.last_used_s < SESSION_IDLE_S
    {
        return Reply::error(code::SESSION_HELD, "Another session is active", when);
    }
    let id = unit.next_session_id();
    unit.session = Some(super::shared::Session {
        id: id.clone(),
        last_used_s: t,
    });
    Reply::ok(
        sim_code::LOGON,
        "Session created",
        when,
        section("SESSION", json!([{"SessionID": id}])),
    )
}

/// `logoff <sid>`, `curtail <sid>,sleep|wakeup`, `profileset <sid>,<profile>`.
fn session_command(
    unit: &mut UnitState,
    now: &Now,
    when: i64,
    command: &str,
    parameter: Option<&str>,
) -> Reply {
    let t = now.sim_s;
    let mut parts = parameter.unwrap_or("").splitn(2, ',');
    let sid = parts.next().unwrap_or("").trim();
    let argument = parts.next().map(str::trim);
    let valid = unit
        .session
        .as_ref()
        .is_some_and(|s| !sid.is_empty() && s.id == sid && t - s.last_used_s < SESSION_IDLE_S);
    if !valid {
        return Reply::error(
            code::ACCESS_DENIED,
            &format!("Access denied to '{command}' command: invalid session id"),
            when,
        );
    }
    if let Some(session) = unit.session.as_mut() {
        session.last_used_s = t;
    }
    match (command, argument) {
        ("logoff", _) => {
            unit.session = None;
            Reply::ok(sim_code::LOGOFF, "Session closed", when, Map::new())
        }
        ("curtail", Some(word)) => match Curtail::parse(word) {
            Some(what) => {
                match what {
                    Curtail::Sleep => unit.unit.sleep(t),
                    Curtail::Wakeup => unit.unit.wakeup(t),
                }
                unit.curtail_log.push((what, now.instant));
                Reply::ok(
                    sim_code::CURTAIL,
                    &format!("Curtail {word}"),
                    when,
                    Map::new(),
                )
            }
            None => Reply::error(
                sim_code::BAD_PARAMETER,
                &format!("curtail wants sleep or wakeup, not {word:?}"),
                when,
            ),
        },
        ("profileset", Some(profile)) => {
            if unit.unit.set_profile(t, profile) {
                let p = json!([{"Profile": profile, "Watts": unit.unit.profile().watts.round()}]);
                Reply::ok(
                    sim_code::PROFILESET,
                    "Profile set",
                    when,
                    section("PROFILE", p),
                )
            } else {
                Reply::error(
                    sim_code::BAD_PARAMETER,
                    &format!("Unknown profile {profile:?}"),
                    when,
                )
            }
        }
        (command, _) => Reply::error(
            sim_code::BAD_PARAMETER,
            &format!("{command} wants '<session id>,<argument>'"),
            when,
        ),
    }
}
