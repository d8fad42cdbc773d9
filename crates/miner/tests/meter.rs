//! The site meter over Modbus TCP: `MeterClient` against `SimMeter` (the load, the energy it
//! integrates, the heartbeat, injected faults) and against scripted servers that answer what no
//! good meter would, byte for byte. Time is Tokio's paused clock: timeouts and energy are exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_modbus::prelude::*;
use wattmesh_miner::meter::{Fault, MAP_LEN, MeterClient, MeterError, Reading, SimMeter, SiteLoad};

const TIMEOUT: Duration = Duration::from_secs(2);

async fn start_meter(kw: f64) -> (SimMeter, SiteLoad, MeterClient) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let load = SiteLoad::new(kw);
    let meter = SimMeter::start(listener, load.clone()).unwrap();
    let client = MeterClient::with_default_unit(meter.local_addr(), TIMEOUT);
    (meter, load, client)
}

/// One step of a site's life: loads set in turn, each held for some seconds, then a read.
struct Step {
    holds: &'static [(f64, u64)],
    want_kw: f64,
    want_kwh: f64,
    want_counter: u32,
}

#[tokio::test(start_paused = true)]
async fn readings_follow_the_load_integrate_energy_and_beat() {
    let steps = [
        Step {
            holds: &[],
            want_kw: 1000.0,
            want_kwh: 0.0,
            want_counter: 1,
        },
        // 1 MW for 36 s is 10 kWh.
        Step {
            holds: &[(1000.0, 36)],
            want_kw: 1000.0,
            want_kwh: 10.0,
            want_counter: 2,
        },
        Step {
            holds: &[(2000.0, 18)],
            want_kw: 2000.0,
            want_kwh: 20.0,
            want_counter: 3,
        },
        // A curtailed site draws nothing and books nothing.
        Step {
            holds: &[(0.0, 3600)],
            want_kw: 0.0,
            want_kwh: 20.0,
            want_counter: 4,
        },
        // Changes between reads are booked at the instant they were made.
        Step {
            holds: &[(500.0, 1800), (1500.0, 1800)],
            want_kw: 1500.0,
            want_kwh: 1020.0,
            want_counter: 5,
        },
        // A constant load still moves the heartbeat.
        Step {
            holds: &[],
            want_kw: 1500.0,
            want_kwh: 1020.0,
            want_counter: 6,
        },
        Step {
            holds: &[(0.25, 3600)],
            want_kw: 0.25,
            want_kwh: 1020.25,
            want_counter: 7,
        },
    ];
    let (meter, load, mut client) = start_meter(1000.0).await;
    for (i, step) in steps.iter().enumerate() {
        for &(kw, secs) in step.holds {
            load.set_kw(kw);
            tokio::time::advance(Duration::from_secs(secs)).await;
        }
        let reading = client.read().await.unwrap();
        let Reading {
            active_power_kw,
            energy_kwh,
            counter,
        } = reading;
        assert_eq!(active_power_kw, step.want_kw, "step {i}: {reading:?}");
        assert_eq!(counter, step.want_counter, "step {i}: {reading:?}");
        // The register holds whole Wh, rounded down.
        assert!(
            (energy_kwh - step.want_kwh).abs() <= 0.001,
            "step {i}: {reading:?}"
        );
        assert!(
            load.energy_kwh() - energy_kwh < 0.001,
            "step {i}: truth {}",
            load.energy_kwh()
        );
    }
    assert_eq!(meter.answers(), 7);
    meter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn impossible_loads_are_errors_and_do_not_poison_energy() {
    let (meter, load, mut client) = start_meter(100.0).await;
    tokio::time::advance(Duration::from_secs(36)).await;
    for kw in [f64::NAN, f64::INFINITY, -5.0] {
        load.set_kw(kw);
        tokio::time::advance(Duration::from_secs(3600)).await;
        let err = client.read().await.unwrap_err();
        assert!(matches!(err, MeterError::BadValue { .. }), "{kw}: {err:?}");
    }
    // The link was fine: the same connection serves the next read, and only the finite,
    // positive load was booked.
    load.set_kw(100.0);
    let reading = client.read().await.unwrap();
    assert_eq!(reading.active_power_kw, 100.0);
    assert!((reading.energy_kwh - 1.0).abs() <= 0.001, "{reading:?}");
    meter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_meter_times_out_within_the_timeout_and_reads_again_when_it_heals() {
    let (meter, _load, mut client) = start_meter(42.0).await;
    client.read().await.unwrap();
    meter.set_fault(Fault::Silent);
    for _ in 0..2 {
        let start = Instant::now();
        let err = client.read().await.unwrap_err();
        let took = start.elapsed();
        assert!(
            matches!(
                err,
                MeterError::Timeout {
                    timeout: TIMEOUT,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            took >= TIMEOUT && took < TIMEOUT + Duration::from_millis(10),
            "{took:?}"
        );
    }
    meter.set_fault(Fault::Healthy);
    let reading = client.read().await.unwrap();
    assert_eq!(reading.active_power_kw, 42.0);
    assert_eq!(reading.counter, 2, "a silent meter serves no answer");
    meter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_meter_is_told_from_a_constant_load() {
    let (meter, load, mut client) = start_meter(1000.0).await;
    let before = client.read().await.unwrap();
    meter.set_fault(Fault::Frozen);
    load.set_kw(3000.0);
    tokio::time::advance(Duration::from_secs(36)).await;
    for _ in 0..3 {
        let err = client.read().await.unwrap_err();
        assert!(
            matches!(err, MeterError::Frozen { counter, .. } if counter == before.counter),
            "{err:?}"
        );
    }
    // Healed, it shows the truth the metrology kept counting: 3 MW for 36 s.
    meter.set_fault(Fault::Healthy);
    let after = client.read().await.unwrap();
    assert_eq!(after.active_power_kw, 3000.0);
    assert!((after.energy_kwh - 30.0).abs() <= 0.001, "{after:?}");
    assert_eq!(after.counter, before.counter + 1);
    meter.shutdown().await;
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut client = MeterClient::with_default_unit(addr, TIMEOUT);
    let err = client.read().await.unwrap_err();
    let MeterError::Connect { addr: at, source } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(*at, addr);
    assert_eq!(
        source.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{err}"
    );
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn a_meter_shut_down_refuses_connections() {
    let (meter, _load, mut client) = start_meter(1.0).await;
    client.read().await.unwrap();
    meter.shutdown().await;
    let err = client.read().await.unwrap_err();
    // The open connection is closed under the client first; the next read cannot reconnect.
    assert!(matches!(err, MeterError::Transport { .. }), "{err:?}");
    let err = client.read().await.unwrap_err();
    assert!(matches!(err, MeterError::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn a_wrong_unit_id_is_an_exception() {
    let (meter, _load, _) = start_meter(1.0).await;
    let mut client = MeterClient::new(meter.local_addr(), 7, TIMEOUT);
    let err = client.read().await.unwrap_err();
    assert!(
        matches!(err, MeterError::Exception { code: 0x0B, .. }),
        "{err:?}"
    );
    meter.shutdown().await;
}

/// Requests the map's edges and what a meter does not do, straight through tokio-modbus.
#[tokio::test]
async fn the_simulator_answers_the_map_and_refuses_the_rest() {
    let (meter, _load, _) = start_meter(1234.5).await;
    let mut ctx = tcp::connect_slave(meter.local_addr(), Slave(1))
        .await
        .unwrap();
    let cases: [(Request<'static>, Result<usize, ExceptionCode>); 9] = [
        (Request::ReadHoldingRegisters(0, MAP_LEN), Ok(16)),
        (Request::ReadInputRegisters(0, MAP_LEN), Ok(16)),
        (Request::ReadHoldingRegisters(MAP_LEN - 2, 2), Ok(2)),
        (
            Request::ReadHoldingRegisters(MAP_LEN - 1, 2),
            Err(ExceptionCode::IllegalDataAddress),
        ),
        (
            Request::ReadInputRegisters(MAP_LEN, 1),
            Err(ExceptionCode::IllegalDataAddress),
        ),
        (
            Request::ReadHoldingRegisters(0, 0),
            Err(ExceptionCode::IllegalDataValue),
        ),
        (
            Request::ReadHoldingRegisters(0, 126),
            Err(ExceptionCode::IllegalDataValue),
        ),
        (
            Request::ReadCoils(0, 1),
            Err(ExceptionCode::IllegalFunction),
        ),
        (
            Request::WriteSingleRegister(0, 1),
            Err(ExceptionCode::IllegalFunction),
        ),
    ];
    for (request, want) in cases {
        let got = ctx.call(request.clone()).await.unwrap();
        let got = got.map(|response| match response {
            Response::ReadHoldingRegisters(words) | Response::ReadInputRegisters(words) => {
                words.len()
            }
            other => panic!("{request:?}: {other:?}"),
        });
        assert_eq!(got, want, "{request:?}");
    }
    // Holding and input registers are one image: power 1234.5 kW, high word first.
    let holding = ctx.read_holding_registers(0, 2).await.unwrap().unwrap();
    let input = ctx.read_input_registers(0, 2).await.unwrap().unwrap();
    assert_eq!(holding, [0x449A, 0x5000]);
    assert_eq!(input, holding);
    meter.shutdown().await;
}

// === scripted servers ===

/// What the client should make of an answer.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Reading { kw: f64 },
    Malformed,
    Transport,
    Timeout,
    Exception(u8),
    BadValue,
}

/// How a scripted server answers the client's request (12 bytes: MBAP header and PDU).
type Script = fn(&[u8; 12]) -> Vec<u8>;

/// An MBAP frame: the request's transaction id, protocol 0, length, unit, then `pdu`.
fn frame(request: &[u8; 12], pdu: &[u8]) -> Vec<u8> {
    let len = u16::try_from(pdu.len() + 1).unwrap().to_be_bytes();
    let mut out = vec![request[0], request[1], 0, 0, len[0], len[1], request[6]];
    out.extend_from_slice(pdu);
    out
}

/// A read-holding-registers answer carrying `words`.
fn registers(request: &[u8; 12], words: &[u16]) -> Vec<u8> {
    let mut pdu = vec![0x03, u8::try_from(words.len() * 2).unwrap()];
    for word in words {
        pdu.extend_from_slice(&word.to_be_bytes());
    }
    frame(request, &pdu)
}

/// Power `kw` (f32), 1 Wh, heartbeat 1.
fn good_words(kw: f32) -> [u16; 8] {
    let bits = kw.to_bits();
    [(bits >> 16) as u16, bits as u16, 0, 0, 0, 1, 0, 1]
}

/// Serves one connection: reads one request, writes the script's answer, then either closes
/// or holds the connection open without another byte.
async fn scripted(script: Script, then_close: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 12];
        stream.read_exact(&mut request).await.unwrap();
        assert_eq!(
            &request[2..],
            &[0, 0, 0, 6, 1, 0x03, 0, 0, 0, 8],
            "the client's request"
        );
        stream.write_all(&script(&request)).await.unwrap();
        if !then_close {
            std::future::pending::<()>().await;
        }
    });
    addr
}

#[tokio::test(start_paused = true)]
async fn answers_no_good_meter_gives_are_clear_errors() {
    let cases: [(&str, Script, bool, Want); 14] = [
        (
            "a good answer",
            |r| registers(r, &good_words(12.5)),
            false,
            Want::Reading { kw: 12.5 },
        ),
        (
            "an exception: illegal data address",
            |r| frame(r, &[0x83, 0x02]),
            false,
            Want::Exception(0x02),
        ),
        (
            "an exception: device busy",
            |r| frame(r, &[0x83, 0x06]),
            false,
            Want::Exception(0x06),
        ),
        (
            "NaN power",
            |r| registers(r, &good_words(f32::NAN)),
            false,
            Want::BadValue,
        ),
        (
            "negative power",
            |r| registers(r, &good_words(-3.0)),
            false,
            Want::BadValue,
        ),
        (
            "four registers for eight",
            |r| registers(r, &good_words(1.0)[..4]),
            false,
            Want::Malformed,
        ),
        (
            "nine registers for eight",
            |r| registers(r, &[0; 9]),
            false,
            Want::Malformed,
        ),
        (
            "another transaction id",
            |r| {
                let mut out = registers(r, &good_words(1.0));
                out[1] ^= 0xFF;
                out
            },
            false,
            Want::Malformed,
        ),
        (
            "another function",
            |r| frame(r, &[0x04, 0x02, 0, 0]),
            false,
            Want::Malformed,
        ),
        (
            "another protocol id",
            |r| {
                let mut out = registers(r, &good_words(1.0));
                out[3] = 1;
                out
            },
            false,
            Want::Malformed,
        ),
        (
            "an odd byte count",
            |r| frame(r, &[0x03, 0x03, 0, 0, 0]),
            false,
            Want::Malformed,
        ),
        (
            "a zero length",
            |r| vec![r[0], r[1], 0, 0, 0, 0, 1, 0x03],
            false,
            Want::Malformed,
        ),
        (
            "text, then close",
            |_| b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
            true,
            Want::Transport,
        ),
        (
            "half an answer, then nothing",
            |r| registers(r, &good_words(1.0))[..9].to_vec(),
            false,
            Want::Timeout,
        ),
    ];
    for (name, script, then_close, want) in cases {
        let addr = scripted(script, then_close).await;
        let mut client = MeterClient::with_default_unit(addr, TIMEOUT);
        let got = match client.read().await {
            Ok(reading) => Want::Reading {
                kw: reading.active_power_kw,
            },
            Err(MeterError::Malformed { .. }) => Want::Malformed,
            Err(MeterError::Transport { .. }) => Want::Transport,
            Err(MeterError::Timeout { .. }) => Want::Timeout,
            Err(MeterError::Exception { code, .. }) => Want::Exception(code),
            Err(MeterError::BadValue { .. }) => Want::BadValue,
            Err(err) => panic!("{name}: {err:?}"),
        };
        assert_eq!(got, want, "{name}");
    }
}

#[tokio::test]
async fn a_meter_that_hangs_up_without_answering_says_so() {
    let addr = scripted(|_| Vec::new(), true).await;
    let mut client = MeterClient::with_default_unit(addr, TIMEOUT);
    let err = client.read().await.unwrap_err();
    assert!(matches!(err, MeterError::Transport { .. }), "{err:?}");
    assert!(err.to_string().contains("closed the connection"), "{err}");
}
