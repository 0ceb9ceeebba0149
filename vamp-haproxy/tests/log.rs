//! The log-line parser: a test per field of Vamp's HTTP and TCP formats.

use vamp_haproxy::log::LogLine;

const HTTP: &str = r#"<134>Nov 24 18:00:00 haproxy[7]: {"ci":"10.0.0.9","cp":51234,"t":"24/Nov/2026:18:00:01.250","ft":"93a45182d84bf6fc0c3c23c33a9501c7d74be2bb","b":"o_93a45182d84bf6fc0c3c23c33a9501c7d74be2bb","s":"62a11db802baf59987a3ece9e10d8754eca16a09","Tq":1,"Tw":2,"Tc":3,"Tr":40,"Tt":46,"ST":503,"B":1234,"CC":"sess=1","CS":"-","tsc":"SC--","ac":7,"fc":6,"bc":5,"sc":4,"rc":1,"sq":2,"bq":3,"hr":"{ua}","hs":"{srv}","r":"GET /a?b=1 HTTP/1.1"}"#;
const TCP: &str = r#"{"ci":"127.0.0.1","cp":40000,"t":"01/Jan/2027:00:00:00.000","ft":"fe0b5f28bbc918d7c54c72552a525894f2dfc09c","b":"o_x","s":"a0f8","Tw":0,"Tc":1,"Tt":1500,"B":99,"ts":"--","ac":1,"fc":1,"bc":1,"sc":1,"rc":0,"sq":0,"bq":0}"#;

#[test]
fn every_http_field() {
    let l = LogLine::parse(HTTP).expect("a Vamp log line");
    assert_eq!(l.client_ip.as_deref(), Some("10.0.0.9"));
    assert_eq!(l.client_port, Some(51234));
    assert_eq!(l.accept_date.as_deref(), Some("24/Nov/2026:18:00:01.250"));
    assert_eq!(l.frontend, "93a45182d84bf6fc0c3c23c33a9501c7d74be2bb");
    assert_eq!(
        l.backend.as_deref(),
        Some("o_93a45182d84bf6fc0c3c23c33a9501c7d74be2bb")
    );
    assert_eq!(
        l.server.as_deref(),
        Some("62a11db802baf59987a3ece9e10d8754eca16a09")
    );
    assert_eq!(
        (l.tq, l.tw, l.tc, l.tr, l.tt),
        (Some(1), Some(2), Some(3), Some(40), Some(46))
    );
    assert_eq!(l.status, Some(503));
    assert_eq!(l.bytes_read, Some(1234));
    assert_eq!(l.captured_request_cookie.as_deref(), Some("sess=1"));
    assert_eq!(l.captured_response_cookie.as_deref(), Some("-"));
    assert_eq!(l.termination_state.as_deref(), Some("SC--"));
    assert_eq!(
        (l.actconn, l.feconn, l.beconn, l.srv_conn),
        (Some(7), Some(6), Some(5), Some(4))
    );
    assert_eq!(
        (l.retries, l.srv_queue, l.backend_queue),
        (Some(1), Some(2), Some(3))
    );
    assert_eq!(l.captured_request_headers.as_deref(), Some("{ua}"));
    assert_eq!(l.captured_response_headers.as_deref(), Some("{srv}"));
    assert_eq!(l.request.as_deref(), Some("GET /a?b=1 HTTP/1.1"));
}

#[test]
fn every_tcp_field() {
    let l = LogLine::parse(TCP).expect("a Vamp TCP log line");
    assert_eq!(
        (l.client_ip.as_deref(), l.client_port),
        (Some("127.0.0.1"), Some(40000))
    );
    assert_eq!(l.frontend, "fe0b5f28bbc918d7c54c72552a525894f2dfc09c");
    assert_eq!(
        (l.backend.as_deref(), l.server.as_deref()),
        (Some("o_x"), Some("a0f8"))
    );
    assert_eq!(
        (l.tq, l.tw, l.tc, l.tr, l.tt),
        (None, Some(0), Some(1), None, Some(1500))
    );
    assert_eq!((l.status, l.bytes_read), (None, Some(99)));
    assert_eq!(l.termination_state.as_deref(), Some("--"));
    assert_eq!(
        (
            l.actconn,
            l.feconn,
            l.beconn,
            l.srv_conn,
            l.retries,
            l.srv_queue,
            l.backend_queue
        ),
        (
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            Some(0),
            Some(0),
            Some(0)
        )
    );
}

#[test]
fn request_records() {
    let r = LogLine::parse(HTTP).unwrap().to_request(0).unwrap();
    assert_eq!(
        r.timestamp_ms,
        vamp_core::time::parse_millis("2026-11-24T18:00:01.250Z").unwrap()
    );
    assert_eq!(
        (r.frontend.as_str(), r.status, r.total_time_ms, r.bytes_read),
        (
            "93a45182d84bf6fc0c3c23c33a9501c7d74be2bb",
            Some(503),
            46,
            1234
        )
    );
    let shifted = LogLine::parse(HTTP).unwrap().to_request(60).unwrap();
    assert_eq!(
        r.timestamp_ms - shifted.timestamp_ms,
        3_600_000,
        "local time an hour east of UTC"
    );
    let tcp = LogLine::parse(TCP).unwrap().to_request(0).unwrap();
    assert_eq!((tcp.status, tcp.total_time_ms), (None, 1500));
    let no_server = HTTP.replace(
        "\"s\":\"62a11db802baf59987a3ece9e10d8754eca16a09\"",
        "\"s\":\"<NOSRV>\"",
    );
    assert_eq!(
        LogLine::parse(&no_server)
            .unwrap()
            .to_request(0)
            .unwrap()
            .server,
        None
    );
}

#[test]
fn a_quote_in_a_captured_header_does_not_lose_the_line() {
    let broken = HTTP.replace("\"hr\":\"{ua}\"", "\"hr\":\"{Mozilla \"quoted\"}\"");
    assert!(
        serde_json::from_str::<serde_json::Value>(&broken[broken.find('{').unwrap()..]).is_err(),
        "the JSON really is broken"
    );
    let l = LogLine::parse(&broken).expect("the fields are read one by one");
    assert_eq!(
        (l.frontend.as_str(), l.status, l.tt, l.bytes_read),
        (
            "93a45182d84bf6fc0c3c23c33a9501c7d74be2bb",
            Some(503),
            Some(46),
            Some(1234)
        )
    );
}

#[test]
fn other_lines_are_not_records() {
    for line in [
        "",
        "Proxy o_abc started.",
        "<133>Nov 24 haproxy[1]: Server x/y is DOWN",
        "{\"no\":\"frontend\"}",
    ] {
        assert_eq!(LogLine::parse(line), None, "{line:?}");
    }
}
