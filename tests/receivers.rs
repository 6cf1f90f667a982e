//! The test receivers (`tests/common/receivers.rs`) checked on their own, with Ferry's MLLP client
//! and reqwest, so that a delivery test failing against them points at delivery, not at them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::receivers::{HttpAnswer, HttpReceiver, MllpAnswer, MllpReceiver};
use ferry::hl7::ack::{AckCode, summarize_ack};
use ferry::mllp::client::{ClientError, MllpClient};
use ferry::mllp::codec::MllpError;

const TIMEOUT: Duration = Duration::from_secs(5);

fn message(control_id: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|FERRY|GW|PACS|RAD|20261122083000||ORM^O01^ORM_O01|{control_id}|P|2.5.1\rPID|1||900001^^^FERRY^MR\r"
    )
    .into_bytes()
}

async fn client(receiver: &MllpReceiver, timeout: Duration) -> MllpClient {
    MllpClient::connect(receiver.addr(), timeout)
        .await
        .expect("connect to the MLLP receiver")
}

fn summary(ack: &[u8]) -> (Option<AckCode>, String) {
    let s = summarize_ack(&String::from_utf8_lossy(ack)).expect("an ACK with MSA");
    (s.code, s.control_id)
}

#[tokio::test]
async fn mllp_acks_echo_msh_10_and_every_message_is_recorded() {
    let his = MllpReceiver::start().await;
    let mut first = client(&his, TIMEOUT).await;
    let mut second = client(&his, TIMEOUT).await;
    let ack = first.request(&message("M-1")).await.unwrap();
    let text = String::from_utf8_lossy(&ack).into_owned();
    assert!(
        text.starts_with("MSH|^~\\&|PACS|RAD|FERRY|GW|"),
        "sender and receiver swapped: {text}"
    );
    assert!(text.ends_with("\rMSA|AA|M-1\r"), "{text}");
    assert_eq!(
        summary(&second.request(&message("M-2")).await.unwrap()),
        (Some(AckCode::AA), "M-2".into())
    );
    assert_eq!(
        summary(&first.request(&message("M-1")).await.unwrap()),
        (Some(AckCode::AA), "M-1".into())
    );

    let got = his.wait_for(3, TIMEOUT).await.unwrap();
    assert_eq!(his.received_count(), 3);
    assert_eq!(his.connection_count(), 2);
    let seen: Vec<(usize, usize, &str, u32)> = got
        .iter()
        .map(|m| (m.index, m.connection, m.control_id.as_str(), m.seen))
        .collect();
    assert_eq!(
        seen,
        vec![(0, 0, "M-1", 1), (1, 1, "M-2", 1), (2, 0, "M-1", 2)]
    );
    assert_eq!(got[1].payload.as_ref(), message("M-2").as_slice());
    assert!(got[0].at <= got[1].at && got[1].at <= got[2].at);
    assert_eq!(got[2].answer, MllpAnswer::Ack(AckCode::AA));
}

#[tokio::test]
async fn mllp_answers_every_ack_code() {
    let his = MllpReceiver::start().await;
    let mut sender = client(&his, TIMEOUT).await;
    for code in [
        AckCode::AA,
        AckCode::AE,
        AckCode::AR,
        AckCode::CA,
        AckCode::CE,
        AckCode::CR,
    ] {
        his.answer_always(MllpAnswer::Ack(code));
        let id = format!("C-{}", code.as_str());
        let ack = sender.request(&message(&id)).await.unwrap();
        assert_eq!(summary(&ack), (Some(code), id), "{code:?}");
        let text = String::from_utf8_lossy(&ack).into_owned();
        assert_eq!(
            text.contains("the test receiver answered"),
            !code.is_accept()
        );
    }
}

#[tokio::test]
async fn mllp_pipelined_messages_are_answered_in_order() {
    let his = MllpReceiver::start().await;
    let mut sender = client(&his, TIMEOUT).await;
    for i in 0..5 {
        sender.send(&message(&format!("P-{i}"))).await.unwrap();
    }
    for i in 0..5 {
        let ack = sender.receive().await.unwrap();
        assert_eq!(summary(&ack).1, format!("P-{i}"));
    }
}

#[tokio::test]
async fn mllp_wrong_msa_2_names_another_control_id() {
    let his = MllpReceiver::start().await;
    his.answer_always(MllpAnswer::WrongMsa2);
    let ack = client(&his, TIMEOUT)
        .await
        .request(&message("W-1"))
        .await
        .unwrap();
    let (code, msa_2) = summary(&ack);
    assert_eq!(code, Some(AckCode::AA));
    assert_ne!(msa_2, "W-1");
    assert!(!msa_2.is_empty());
}

#[tokio::test]
async fn mllp_garbage_is_a_frame_that_is_not_hl7() {
    let his = MllpReceiver::start().await;
    his.answer_always(MllpAnswer::Garbage);
    let answer = client(&his, TIMEOUT)
        .await
        .request(&message("G-1"))
        .await
        .unwrap();
    assert!(!answer.is_empty());
    assert!(summarize_ack(&String::from_utf8_lossy(&answer)).is_none());
}

#[tokio::test]
async fn mllp_silent_leaves_the_sender_to_time_out_and_keeps_reading() {
    let his = MllpReceiver::start().await;
    his.answer_in_turn(vec![MllpAnswer::Silent, MllpAnswer::Ack(AckCode::AA)]);
    let mut sender = client(&his, Duration::from_millis(300)).await;
    let err = sender.request(&message("S-1")).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
    // The same connection still works: the next message is read and answered.
    let ack = sender.request(&message("S-1")).await.unwrap();
    assert_eq!(summary(&ack), (Some(AckCode::AA), "S-1".into()));
    let got = his.received();
    assert_eq!(
        got.iter()
            .map(|m| (m.seen, m.answer.clone()))
            .collect::<Vec<_>>(),
        vec![(1, MllpAnswer::Silent), (2, MllpAnswer::Ack(AckCode::AA))]
    );
}

#[tokio::test]
async fn mllp_close_before_answer() {
    let his = MllpReceiver::start().await;
    his.answer_always(MllpAnswer::CloseBeforeAnswer);
    let err = client(&his, TIMEOUT)
        .await
        .request(&message("X-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Closed), "{err:?}");
    assert_eq!(his.received_count(), 1);
}

#[tokio::test]
async fn mllp_close_mid_answer_leaves_half_a_frame() {
    let his = MllpReceiver::start().await;
    his.answer_always(MllpAnswer::CloseMidAnswer);
    let err = client(&his, TIMEOUT)
        .await
        .request(&message("H-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Mllp(MllpError::IncompleteFrame { buffered }) if buffered > 10
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn mllp_delay_answers_late() {
    let his = MllpReceiver::start().await;
    his.answer_always(MllpAnswer::Delay(Duration::from_millis(300), AckCode::CA));
    let mut sender = client(&his, TIMEOUT).await;
    let t0 = Instant::now();
    let ack = sender.request(&message("D-1")).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert_eq!(summary(&ack), (Some(AckCode::CA), "D-1".into()));
}

#[tokio::test]
async fn mllp_policy_sees_how_often_a_control_id_arrived() {
    let his = MllpReceiver::start().await;
    his.set_policy(|m, seen| {
        if m.control_id == "R-1" && seen < 3 {
            MllpAnswer::Ack(AckCode::AE)
        } else {
            MllpAnswer::Ack(AckCode::AA)
        }
    });
    let mut sender = client(&his, TIMEOUT).await;
    let mut codes = Vec::new();
    for id in ["R-1", "R-2", "R-1", "R-1"] {
        codes.push(summary(&sender.request(&message(id)).await.unwrap()).0);
    }
    assert_eq!(
        codes,
        vec![
            Some(AckCode::AE),
            Some(AckCode::AA),
            Some(AckCode::AE),
            Some(AckCode::AA)
        ]
    );
}

#[tokio::test]
async fn mllp_stop_closes_everything_and_restart_comes_back_on_the_same_port() {
    let his = MllpReceiver::start().await;
    let addr = his.addr();
    let mut idle = client(&his, TIMEOUT).await;
    idle.request(&message("B-1")).await.unwrap();
    // A message in flight when the receiver goes away gets no answer.
    his.answer_always(MllpAnswer::Delay(Duration::from_secs(30), AckCode::AA));
    let mut waiting = client(&his, TIMEOUT).await;
    waiting.send(&message("B-2")).await.unwrap();
    his.wait_for(2, TIMEOUT).await.unwrap();

    let t0 = Instant::now();
    his.stop().await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        t0.elapsed()
    );
    assert!(matches!(waiting.receive().await, Err(ClientError::Closed)));
    assert!(idle.request(&message("B-3")).await.is_err());
    assert!(MllpClient::connect(addr, TIMEOUT).await.is_err());

    his.answer_always(MllpAnswer::Ack(AckCode::AA));
    his.restart().await.unwrap();
    assert_eq!(his.addr(), addr);
    let ack = client(&his, TIMEOUT)
        .await
        .request(&message("B-2"))
        .await
        .unwrap();
    assert_eq!(summary(&ack), (Some(AckCode::AA), "B-2".into()));
    let got = his.received();
    let last = got.last().unwrap();
    assert_eq!((last.control_id.as_str(), last.seen), ("B-2", 2));
    assert_eq!(
        last.connection, 2,
        "connection numbers go on after a restart"
    );

    // Stopping twice, and restarting a running receiver, are both fine.
    his.stop().await;
    his.stop().await;
    his.restart().await.unwrap();
    his.restart().await.unwrap();
    client(&his, TIMEOUT)
        .await
        .request(&message("B-4"))
        .await
        .unwrap();
}

#[tokio::test]
async fn mllp_bind_on_a_given_port() {
    let first = MllpReceiver::start().await;
    let addr = first.addr();
    drop(first);
    // The dropped receiver's listener closes asynchronously; bind retries meanwhile.
    let again = MllpReceiver::bind(addr).await.unwrap();
    assert_eq!(again.addr(), addr);
    client(&again, TIMEOUT)
        .await
        .request(&message("P-1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn wait_for_says_how_many_arrived_when_it_times_out() {
    let his = MllpReceiver::start().await;
    client(&his, TIMEOUT)
        .await
        .request(&message("T-1"))
        .await
        .unwrap();
    let err = his
        .wait_for(2, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!((err.wanted, err.got), (2, 1));
}

/// reqwest with `rustls-no-provider` needs a crypto provider even for plain HTTP.
fn http_client(timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("build the HTTP client")
}

#[tokio::test]
async fn http_records_requests_and_answers_200_by_default() {
    let hook = HttpReceiver::start().await;
    let http = http_client(TIMEOUT);
    let response = http
        .post(hook.url("/events?tenant=h1"))
        .header("content-type", "application/json")
        .header("Idempotency-Key", "evt-1")
        .body(r#"{"type":"PatientAdmitted"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let got = hook.wait_for(1, TIMEOUT).await.unwrap();
    let r = &got[0];
    assert_eq!((r.index, r.method.as_str()), (0, "POST"));
    assert_eq!(r.path, "/events?tenant=h1");
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("idempotency-key"), Some("evt-1"));
    assert_eq!(r.json()["type"], "PatientAdmitted");
    assert_eq!(r.seen, 1);
    assert_eq!(hook.received_count(), 1);
}

#[tokio::test]
async fn http_answers_status_retry_after_and_body_in_turn() {
    let hook = HttpReceiver::start().await;
    hook.answer_in_turn(vec![
        HttpAnswer::status(503).retry_after("2"),
        HttpAnswer::status(429).retry_after("Wed, 21 Oct 2026 07:28:00 GMT"),
        HttpAnswer::status(400).body("bad event"),
        HttpAnswer::status(204),
    ]);
    let http = http_client(TIMEOUT);
    let mut answers = Vec::new();
    for _ in 0..5 {
        let response = http
            .post(hook.url("/hook"))
            .body("same")
            .send()
            .await
            .unwrap();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status().as_u16();
        answers.push((status, retry_after, response.text().await.unwrap()));
    }
    assert_eq!(
        answers,
        vec![
            (503, Some("2".into()), String::new()),
            (
                429,
                Some("Wed, 21 Oct 2026 07:28:00 GMT".into()),
                String::new()
            ),
            (400, None, "bad event".into()),
            (204, None, String::new()),
            (204, None, String::new()),
        ]
    );
    let seen: Vec<u32> = hook.received().iter().map(|r| r.seen).collect();
    assert_eq!(seen, vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn http_policy_sees_repeats_of_the_same_request() {
    let hook = HttpReceiver::start().await;
    hook.set_policy(|_, seen| {
        if seen == 1 {
            HttpAnswer::status(500)
        } else {
            HttpAnswer::status(200)
        }
    });
    let http = http_client(TIMEOUT);
    let mut statuses = Vec::new();
    for body in ["a", "b", "a"] {
        let r = http.post(hook.url("/x")).body(body).send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![500, 500, 200]);
}

#[tokio::test]
async fn http_delay_and_silence() {
    let hook = HttpReceiver::start().await;
    hook.answer_in_turn(vec![
        HttpAnswer::status(202).delay(Duration::from_millis(300)),
        HttpAnswer::silent(),
    ]);
    let http = http_client(Duration::from_millis(1500));
    let t0 = Instant::now();
    let r = http.post(hook.url("/slow")).body("1").send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    let err = http
        .post(hook.url("/silent"))
        .body("2")
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(hook.received_count(), 2);
}

#[tokio::test]
async fn http_stop_closes_waiting_requests_and_restart_comes_back_on_the_same_port() {
    let hook = HttpReceiver::start().await;
    let addr = hook.addr();
    let http = http_client(Duration::from_secs(20));
    // Leaves an idle keep-alive connection in the client's pool: stop must close it too, or the
    // next request would still be answered by the stopped receiver.
    let r = http.get(hook.url("/first")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    hook.answer_always(HttpAnswer::silent());
    let waiting = tokio::spawn({
        let http = http.clone();
        let url = hook.url("/wait");
        async move { http.post(url).body("w").send().await }
    });
    hook.wait_for(2, TIMEOUT).await.unwrap();
    let t0 = Instant::now();
    hook.stop().await;
    let result = waiting.await.unwrap();
    assert!(result.is_err(), "{result:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let err = http.get(hook.url("/down")).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    hook.answer_always(HttpAnswer::status(200).body("back"));
    hook.restart().await.unwrap();
    assert_eq!(hook.addr(), addr);
    let r = http.get(hook.url("/up")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "back");
    let paths: Vec<String> = hook.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/first", "/wait", "/up"]);
}
