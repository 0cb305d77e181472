//! The channel benchmark of issue 12, against local fakes of each
//! provider's API (the testkit's, which check the wire format as the tests
//! do) and the local Redis:
//!
//! 1. sends per second through one worker's provider layer
//!    (`Channels::send`: reading the message, the rate limiter when set,
//!    the provider's request and its answer), `--concurrency` at once, for
//!    each provider kind, with p50/p99 of one send;
//! 2. where the time goes: the same sends through the `log` provider (our
//!    own path alone, no I/O), through a webhook (plus one local HTTP call),
//!    and through a webhook behind a Redis-shared rate limit set far above
//!    the load (plus one Redis round trip);
//! 3. the rate limiter's accuracy: two limiters sharing Redis, 16 senders,
//!    for each limit, sends per second measured against the limit.
//!
//! `cargo run --release -p sojourn-actors --example channel_bench --
//! [--messages N] [--concurrency C] [--seconds S]`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sojourn_actors::channels::{Channel, ChannelConfig, Channels, Context, ProviderConfig};
use sojourn_actors::egress::EgressPolicy;
use sojourn_actors::providers::HttpProvider;
use sojourn_runtime::{ActionOutcome, Dispatch, NodeId};
use sojourn_testkit::bench_arg as arg;
use sojourn_testkit::fakes::{self, Fake};
use sojourn_testkit::smtp::SmtpSink;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn build(providers: Value, cluster: Option<Arc<sojourn_actors::Cluster>>) -> Channels {
    let providers: BTreeMap<String, ProviderConfig> =
        serde_json::from_value(providers).expect("providers");
    Channels::build(
        &providers,
        &BTreeMap::<String, ChannelConfig>::new(),
        &Context {
            secrets: sojourn_actors::Secrets::default(),
            cluster,
            egress: EgressPolicy::allowing_loopback(),
        },
    )
    .expect("the providers build")
}

fn dispatch(action: &str, n: u64, inputs: &Value) -> Dispatch {
    Dispatch {
        node: NodeId::from("n"),
        action: action.into(),
        attempt: 1,
        idempotency_key: format!("exe_bench{n}/n/1"),
        inputs: inputs.clone(),
        timeout_ms: 30_000,
        frequency_caps: None,
        via: None,
    }
}

/// Sends `messages` through `provider`, `concurrency` at once: sends per
/// second and the latency of one send.
async fn run(
    channels: Arc<Channels>,
    action: &'static str,
    inputs: Value,
    messages: u64,
    concurrency: u64,
) -> (f64, Duration, Duration, u64) {
    let http = Arc::new(HttpProvider::new(
        EgressPolicy::allowing_loopback(),
        1 << 20,
    ));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (channels, http, next, inputs) =
            (channels.clone(), http.clone(), next.clone(), inputs.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0u64;
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= messages {
                    break;
                }
                let d = dispatch(action, n, &inputs);
                let t = Instant::now();
                let channel = Channel::of_action(action).expect("a channel");
                let (out, _) = channels.send(channel, &d, &inputs, &http).await;
                lat.push(t.elapsed());
                if !matches!(out, ActionOutcome::Success { .. }) {
                    failed += 1;
                    if failed == 1 {
                        eprintln!("a send failed: {out:?}");
                    }
                }
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.expect("sender");
        lat.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    (
        messages as f64 / elapsed,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        failed,
    )
}

#[tokio::main]
async fn main() {
    let messages = arg("--messages", 5_000);
    let concurrency = arg("--concurrency", 64);
    let seconds = arg("--seconds", 3);
    let smtp = SmtpSink::start().await;
    let sendgrid = Fake::sendgrid("SG.k").await;
    let mailgun = Fake::mailgun("mg").await;
    let ses = Fake::ses("AKIAIOSFODNN7EXAMPLE:secret").await;
    let twilio = Fake::twilio("AC0123456789abcdef0123456789abcdef:t").await;
    let vonage = Fake::vonage("vk:vs").await;
    let sns = Fake::sns("AKIAIOSFODNN7EXAMPLE:secret").await;
    let fcm = Fake::fcm().await;
    let apns = Fake::apns().await;
    let push = Fake::push_service().await;
    let slack = Fake::slack("xoxb").await;
    let discord = Fake::discord().await;
    let teams = Fake::teams().await;
    let sink = sojourn_testkit::Sink::start().await;
    let redis = Arc::new(
        sojourn_actors::Cluster::redis("redis://127.0.0.1:6379", "bench", Duration::from_secs(5))
            .expect("redis"),
    );
    let limits = json!({"concurrency": concurrency});
    let aws = |endpoint: String| {
        json!({"region": "us-east-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "secret_access_key": "secret", "endpoint": endpoint, "limits": limits})
    };
    let mut ses_config = aws(ses.url());
    ses_config["kind"] = json!("ses");
    ses_config["from"] = json!("news@shop.test");
    let mut sns_config = aws(sns.url());
    sns_config["kind"] = json!("sns");
    let providers = json!({
        "log": {"kind": "log", "limits": limits},
        "webhook": {"kind": "webhook", "url": format!("{}/send", sink.url()), "limits": limits},
        "webhook-limited": {"kind": "webhook", "url": format!("{}/send", sink.url()),
                            "limits": {"concurrency": concurrency, "per_second": 1_000_000, "burst": 1_000_000}},
        "smtp": {"kind": "smtp", "host": "127.0.0.1", "port": smtp.port(), "tls": "none", "from": "news@shop.test",
                 "pool_size": 16, "limits": limits},
        "sendgrid": {"kind": "sendgrid", "api_key": "SG.k", "from": "news@shop.test", "base_url": sendgrid.url(), "limits": limits},
        "mailgun": {"kind": "mailgun", "domain": "mg.shop.test", "api_key": "mg", "from": "news@shop.test", "base_url": mailgun.url(), "limits": limits},
        "ses": ses_config,
        "twilio": {"kind": "twilio", "account_sid": "AC0123456789abcdef0123456789abcdef", "auth_token": "t",
                   "from": "+15005550006", "base_url": twilio.url(), "limits": limits},
        "vonage": {"kind": "vonage", "api_key": "vk", "api_secret": "vs", "from": "Shop", "base_url": vonage.url(), "limits": limits},
        "sns": sns_config,
        "fcm": {"kind": "fcm", "service_account": fakes::fcm_service_account(&fcm.url()).to_string(), "base_url": fcm.url(), "limits": limits},
        "apns": {"kind": "apns", "team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": fakes::APNS_TEST_PRIVATE_KEY,
                 "topic": "test.sojourn.app", "base_url": apns.url(), "limits": limits},
        "webpush": {"kind": "webpush", "subject": "mailto:ops@shop.test",
                    "vapid_private_key": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc", "limits": limits},
        "slack": {"kind": "slack", "webhook_url": format!("{}/services/T/B/x", slack.url()), "limits": limits},
        "discord": {"kind": "discord", "webhook_url": format!("{}/api/webhooks/1/t", discord.url()), "limits": limits},
        "teams": {"kind": "teams", "webhook_url": format!("{}/webhook", teams.url()), "limits": limits},
    });
    let channels = Arc::new(build(providers, Some(redis.clone())));
    let email = |p: &str| {
        json!({"to": "ann@example.com", "subject": "Your order", "text": "Thanks for your order.",
        "html": "<p>Thanks for your <b>order</b>.</p>", "provider": p})
    };
    let sms = |p: &str| json!({"to": "+33612345678", "body": "Your code is 123456", "provider": p});
    let cases: Vec<(&str, &'static str, Value)> = vec![
        ("log (our path alone)", "email.send", email("log")),
        (
            "webhook (+ one local HTTP call)",
            "email.send",
            email("webhook"),
        ),
        (
            "webhook, Redis rate limit (+ one Redis call)",
            "email.send",
            email("webhook-limited"),
        ),
        ("smtp (lettre, pool of 16)", "email.send", email("smtp")),
        ("sendgrid", "email.send", email("sendgrid")),
        ("mailgun (multipart)", "email.send", email("mailgun")),
        ("ses (SigV4, raw MIME)", "email.send", email("ses")),
        ("twilio", "sms.send", sms("twilio")),
        ("vonage", "sms.send", sms("vonage")),
        ("sns (SigV4)", "sms.send", sms("sns")),
        (
            "fcm (cached OAuth2 token)",
            "push.send",
            json!({"to": "device-1", "title": "Hi", "body": "Hello", "provider": "fcm"}),
        ),
        (
            "apns (HTTP/2, ES256 token)",
            "push.send",
            json!({"to": "a1b2c3", "title": "Hi", "body": "Hello", "provider": "apns"}),
        ),
        (
            "webpush (aes128gcm + VAPID)",
            "push.send",
            json!({"subscription": fakes::push_subscription(&push.url(), "/push/b"),
            "title": "Hi", "body": "Hello", "provider": "webpush"}),
        ),
        (
            "slack webhook",
            "chat.send",
            json!({"text": "Deployed", "provider": "slack"}),
        ),
        (
            "discord webhook",
            "chat.send",
            json!({"text": "Deployed", "provider": "discord"}),
        ),
        (
            "teams webhook",
            "chat.send",
            json!({"text": "Deployed", "provider": "teams"}),
        ),
    ];
    println!(
        "1-2. sends through one worker's provider layer: {messages} messages, {concurrency} at once (local fakes)"
    );
    println!(
        "{:<46} {:>10} {:>10} {:>10}",
        "provider", "sends/s", "p50", "p99"
    );
    for (name, action, inputs) in cases {
        let (rate, p50, p99, failed) =
            run(channels.clone(), action, inputs, messages, concurrency).await;
        let note = if failed > 0 {
            format!("  ({failed} failed)")
        } else {
            String::new()
        };
        println!(
            "{name:<46} {rate:>10.0} {:>10.2?} {:>10.2?}{note}",
            p50, p99
        );
    }

    // Before: lettre's own pooled transport, to the same sink, the same
    // way (its sockets keep Nagle on: 40 ms a message).
    {
        use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
        let transport = Arc::new(
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
                .port(smtp.port())
                .pool_config(lettre::transport::smtp::PoolConfig::new().max_size(16))
                .build(),
        );
        let n = (messages / 10).max(100);
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (transport, next) = (transport.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let m = lettre::Message::builder()
                        .from("news@shop.test".parse().expect("from"))
                        .to("ann@example.com".parse().expect("to"))
                        .subject("Your order")
                        .body("Thanks for your order.".to_owned())
                        .expect("message");
                    let t = Instant::now();
                    transport.send(m).await.expect("sent");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("sender"));
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        lat.sort_unstable();
        println!(
            "{:<46} {rate:>10.0} {:>10.2?} {:>10.2?}",
            format!("smtp, before: lettre's pooled transport ({n})"),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }

    println!();
    println!(
        "3. rate limit accuracy: two limiters sharing Redis, 16 senders, {seconds} s, burst 1"
    );
    println!("{:>10} {:>10} {:>10}", "limit/s", "sent/s", "of limit");
    for limit in [10.0f64, 50.0, 200.0, 1000.0] {
        let name = format!("rate-{}-{}", limit as u64, uuid::Uuid::now_v7().simple());
        let make = || {
            let cluster = Arc::new(
                sojourn_actors::Cluster::redis(
                    "redis://127.0.0.1:6379",
                    "bench",
                    Duration::from_secs(5),
                )
                .expect("redis"),
            );
            Arc::new(build(
                json!({name.clone(): {"kind": "log", "limits": {"per_second": limit, "burst": 1, "concurrency": 64}}}),
                Some(cluster),
            ))
        };
        let limiters = [make(), make()];
        let window = Duration::from_secs(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (w, ch) in limiters.iter().enumerate() {
            for t in 0..8u64 {
                let (ch, name) = (ch.clone(), name.clone());
                tasks.push(tokio::spawn(async move {
                    let http = HttpProvider::new(EgressPolicy::allowing_loopback(), 1 << 20);
                    let inputs = json!({"text": "x", "provider": name});
                    let mut n = 0u64;
                    while started.elapsed() < window {
                        let d = dispatch(
                            "chat.send",
                            (w as u64) * 1_000_000 + t * 10_000 + n,
                            &inputs,
                        );
                        let _ = ch.send(Channel::Chat, &d, &inputs, &http).await;
                        n += 1;
                    }
                    n
                }));
            }
        }
        let mut sent = 0u64;
        for t in tasks {
            sent += t.await.expect("sender");
        }
        let rate = sent as f64 / started.elapsed().as_secs_f64();
        println!("{limit:>10.0} {rate:>10.1} {:>9.1}%", rate / limit * 100.0);
    }
}
