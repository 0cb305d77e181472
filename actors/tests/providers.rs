//! Each provider against a local fake of its API (or an SMTP sink) that
//! checks the documented wire format and answers as the provider does:
//! what is sent, how each refusal is classed (retryable or not, with
//! `Retry-After`), failover to the next provider with the same key, the
//! rate limit moving a send on, and credentials never leaking.

use std::collections::BTreeMap;

use mail_parser::MimeHeaders;
use serde_json::{Value, json};
use sojourn_actors::channels::{
    Channel, ChannelConfig, Channels, Context, Delivery, ProviderConfig,
};
use sojourn_actors::egress::EgressPolicy;
use sojourn_actors::providers::HttpProvider;
use sojourn_runtime::{ActionOutcome, Dispatch, NodeId};
use sojourn_testkit::fakes::{Answer, Fake};
use sojourn_testkit::smtp::SmtpSink;

fn build(
    providers: Value,
    channels: Value,
) -> Result<Channels, sojourn_actors::channels::ConfigError> {
    let providers: BTreeMap<String, ProviderConfig> =
        serde_json::from_value(providers).expect("provider configurations");
    let channels: BTreeMap<String, ChannelConfig> =
        serde_json::from_value(channels).expect("channel configurations");
    let mut secrets = BTreeMap::new();
    secrets.insert("SG_KEY".to_owned(), "SG.from-the-secrets".to_owned().into());
    Channels::build(
        &providers,
        &channels,
        &Context {
            secrets: sojourn_actors::Secrets::new(secrets),
            cluster: None,
            egress: EgressPolicy::allowing_loopback(),
        },
    )
}

fn channels(providers: Value, channels: Value) -> Channels {
    build(providers, channels).expect("the providers build")
}

async fn send(
    ch: &Channels,
    action: &str,
    key: &str,
    inputs: Value,
) -> (ActionOutcome, Vec<Delivery>) {
    let d = Dispatch {
        node: NodeId::from("n"),
        action: action.into(),
        attempt: 1,
        idempotency_key: key.into(),
        inputs: inputs.clone(),
        timeout_ms: 5_000,
        frequency_caps: None,
        via: None,
    };
    let http = HttpProvider::new(EgressPolicy::allowing_loopback(), 1 << 20);
    let channel = Channel::of_action(action).expect("a channel action");
    ch.send(channel, &d, &inputs, &http).await
}

fn output(o: &ActionOutcome) -> &Value {
    match o {
        ActionOutcome::Success { output } => output,
        ActionOutcome::Failure { output, .. } => output,
        other => panic!("a provider answers a success or a failure, not {other:?}"),
    }
}

fn failure(o: &ActionOutcome) -> (String, bool, Option<u64>) {
    match o {
        ActionOutcome::Failure {
            error,
            retryable,
            retry_after_ms,
            ..
        } => (error.clone(), *retryable, *retry_after_ms),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn smtp_sends_a_multipart_message_with_its_attachment_and_classes_replies() {
    let sink = SmtpSink::with_auth("mailer", "s3cret-pass").await;
    let files = sojourn_testkit::Sink::start().await;
    files.reply(sojourn_testkit::Reply::Large(2048));
    let ch = channels(
        json!({"mail": {"kind": "smtp", "host": "127.0.0.1", "port": sink.port(), "tls": "none",
            "username": "mailer", "password": "s3cret-pass", "from": "Shop <news@shop.test>"}}),
        json!({"email": {"providers": ["mail"]}}),
    );
    let (out, deliveries) = send(
        &ch,
        "email.send",
        "exe_1/mail/1",
        json!({"to": "Ann <ann@example.com>", "subject": "Welcome, Ann — café",
            "text": "Hello Ann", "html": "<p>Hello <b>Ann</b></p>", "reply_to": "help@shop.test",
            "headers": {"X-Campaign": "spring"},
            "attachments": [{"url": format!("{}/files/terms.pdf", files.url()), "content_type": "application/pdf"}]}),
    )
    .await;
    assert!(matches!(out, ActionOutcome::Success { .. }), "{out:?}");
    assert_eq!(output(&out)["provider"], "mail");
    assert_eq!(output(&out)["status"], "sent");
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].status, "sent");
    let mails = sink.mails();
    assert_eq!(mails.len(), 1);
    let m = &mails[0];
    assert_eq!(m.user.as_deref(), Some("mailer"));
    assert_eq!(m.from, "news@shop.test");
    assert_eq!(m.to, ["ann@example.com"]);
    let parsed = mail_parser::MessageParser::default()
        .parse(m.data.as_bytes())
        .expect("the message parses as MIME");
    assert_eq!(
        parsed.subject(),
        Some("Welcome, Ann — café"),
        "an encoded non-ASCII subject"
    );
    assert_eq!(
        parsed.message_id(),
        Some("exe_1/mail/1@shop.test"),
        "the attempt's key is the Message-ID"
    );
    assert_eq!(
        deliveries[0].message_id.as_deref(),
        Some("<exe_1/mail/1@shop.test>")
    );
    assert_eq!(
        parsed.header_raw("X-Campaign").map(str::trim),
        Some("spring")
    );
    assert_eq!(
        parsed
            .reply_to()
            .and_then(|r| r.first())
            .and_then(|a| a.address()),
        Some("help@shop.test")
    );
    assert_eq!(
        parsed.content_type().map(|c| c.subtype()),
        Some(Some("mixed"))
    );
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim),
        Some("Hello Ann")
    );
    assert!(
        parsed
            .body_html(0)
            .is_some_and(|h| h.contains("<b>Ann</b>"))
    );
    let alternative = parsed.parts.iter().any(|p| {
        p.content_type()
            .is_some_and(|c| c.subtype() == Some("alternative"))
    });
    assert!(alternative, "text and html as multipart/alternative");
    let attachment = parsed.attachment(0).expect("an attachment");
    assert_eq!(attachment.attachment_name(), Some("terms.pdf"));
    assert_eq!(attachment.contents().len(), 2048);
    assert_eq!(
        attachment.content_type().map(|c| (c.ctype(), c.subtype())),
        Some(("application", Some("pdf")))
    );

    // Connections are reused: five more messages, no new connection.
    let before = sink.connections();
    for n in 0..5 {
        let (out, _) = send(
            &ch,
            "email.send",
            &format!("exe_1/more/{n}"),
            json!({"to": "ann@example.com", "subject": "x", "text": "x"}),
        )
        .await;
        assert!(matches!(out, ActionOutcome::Success { .. }), "{out:?}");
    }
    assert_eq!(sink.connections(), before, "the pool reuses its connection");
    assert_eq!(sink.mails().len(), 6);

    // A refused recipient is permanent, with the reply's code.
    let (out, deliveries) = send(
        &ch,
        "email.send",
        "exe_1/mail/2",
        json!({"to": "bounce@example.com", "subject": "x", "text": "x"}),
    )
    .await;
    let (error, retryable, _) = failure(&out);
    assert!(!retryable, "{error}");
    assert_eq!(output(&out)["class"], "invalid_recipient");
    assert_eq!(output(&out)["code"], "550");
    assert_eq!(deliveries[0].status, "failed");
    assert_eq!(deliveries[0].error_class, Some("invalid_recipient"));

    // 451: try again later.
    sink.busy(1);
    let (out, _) = send(
        &ch,
        "email.send",
        "exe_1/mail/3",
        json!({"to": "ann@example.com", "subject": "x", "text": "x"}),
    )
    .await;
    let (_, retryable, _) = failure(&out);
    assert!(retryable);
    assert_eq!(output(&out)["class"], "unavailable");

    // A bad password is the credentials, permanent; the password is in no answer.
    let wrong = channels(
        json!({"mail": {"kind": "smtp", "host": "127.0.0.1", "port": sink.port(), "tls": "none",
            "username": "mailer", "password": "not-the-pass", "from": "news@shop.test"}}),
        json!({"email": {"providers": ["mail"]}}),
    );
    let (out, deliveries) = send(
        &wrong,
        "email.send",
        "exe_1/mail/4",
        json!({"to": "ann@example.com", "subject": "x", "text": "x"}),
    )
    .await;
    let (error, retryable, _) = failure(&out);
    assert!(!retryable);
    assert_eq!(output(&out)["class"], "auth");
    assert!(!error.contains("not-the-pass") && !format!("{deliveries:?}").contains("not-the-pass"));
    assert!(
        !format!("{wrong:?}").contains("not-the-pass"),
        "Debug shows no credential"
    );
    assert_eq!(sink.mails().len(), 6);
}

#[tokio::test]
async fn sendgrid_sends_v3_mail_and_reports_each_refusal_as_sendgrid_means_it() {
    let fake = Fake::sendgrid("SG.from-the-secrets").await;
    let ch = channels(
        json!({"sg": {"kind": "sendgrid", "api_key": "secret:SG_KEY", "from": "News <news@shop.test>", "base_url": fake.url()}}),
        json!({"email": {"providers": ["sg"]}}),
    );
    let (out, deliveries) = send(&ch, "email.send", "exe_2/mail/1",
        json!({"to": ["Ann <ann@example.com>", "bob@example.com"], "subject": "Hi", "text": "t", "html": "<p>h</p>",
            "headers": {"X-Campaign": "c"}})).await;
    assert!(
        matches!(out, ActionOutcome::Success { .. }),
        "{out:?} {:?}",
        fake.refused()
    );
    assert_eq!(output(&out)["status"], "queued");
    let id = output(&out)["message_id"]
        .as_str()
        .expect("X-Message-Id")
        .to_owned();
    assert_eq!(deliveries[0].message_id.as_deref(), Some(id.as_str()));
    let r = &fake.accepted()[0];
    assert_eq!(r.body["custom_args"]["sojourn_key"], "exe_2/mail/1");
    assert_eq!(
        r.body["personalizations"][0]["to"][0],
        json!({"email": "ann@example.com", "name": "Ann"})
    );
    assert_eq!(
        r.body["from"],
        json!({"email": "news@shop.test", "name": "News"})
    );
    assert_eq!(r.body["content"][0]["type"], "text/plain");
    assert_eq!(r.body["headers"]["X-Campaign"], "c");

    // 429 with Retry-After: retryable, the wait carried to the node's retry.
    fake.script([Answer::new(
        429,
        r#"{"errors":[{"message":"too many requests","field":null,"help":null}]}"#,
    )
    .header("Retry-After", "30")]);
    let (out, _) = send(
        &ch,
        "email.send",
        "exe_2/mail/2",
        json!({"to": "a@b.test", "subject": "s", "text": "t"}),
    )
    .await;
    let (_, retryable, after) = failure(&out);
    assert!(retryable);
    assert_eq!(after, Some(30_000));
    assert_eq!(output(&out)["class"], "rate_limited");

    fake.script([Answer::new(503, "Service Unavailable")]);
    let (out, _) = send(
        &ch,
        "email.send",
        "exe_2/mail/3",
        json!({"to": "a@b.test", "subject": "s", "text": "t"}),
    )
    .await;
    assert!(failure(&out).1);
    assert_eq!(output(&out)["class"], "unavailable");

    // An address SendGrid refuses: permanent, the recipient's.
    let (out, _) = send(
        &ch,
        "email.send",
        "exe_2/mail/4",
        json!({"to": "a@localhost", "subject": "s", "text": "t"}),
    )
    .await;
    let (error, retryable, _) = failure(&out);
    assert!(!retryable);
    assert_eq!(output(&out)["class"], "invalid_recipient", "{error}");
    assert!(error.contains("personalizations.0.to.0.email"), "{error}");

    // A wrong key: auth, permanent, and the key is in no answer.
    let wrong = channels(
        json!({"sg": {"kind": "sendgrid", "api_key": "SG.wrong-key-123", "from": "news@shop.test", "base_url": fake.url()}}),
        json!({"email": {"providers": ["sg"]}}),
    );
    let (out, d) = send(
        &wrong,
        "email.send",
        "exe_2/mail/5",
        json!({"to": "a@b.test", "subject": "s", "text": "t"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "auth");
    assert!(!format!("{out:?}{d:?}{wrong:?}").contains("wrong-key-123"));
}

#[tokio::test]
async fn a_retryable_failure_or_a_full_rate_limit_moves_the_attempt_to_the_next_provider_with_the_same_key()
 {
    let sg = Fake::sendgrid("SG.k").await;
    let mg = Fake::mailgun("mg-key").await;
    let ch = channels(
        json!({
            "sg": {"kind": "sendgrid", "api_key": "SG.k", "from": "news@shop.test", "base_url": sg.url(),
                   "limits": {"per_second": 0.001, "burst": 4}},
            "mg": {"kind": "mailgun", "domain": "mg.shop.test", "api_key": "mg-key", "from": "news@shop.test", "base_url": mg.url()},
        }),
        json!({"email": {"providers": ["sg", "mg"]}}),
    );
    sg.script([Answer::new(503, "Service Unavailable")]);
    let (out, deliveries) = send(
        &ch,
        "email.send",
        "exe_3/mail/1",
        json!({"to": "ann@example.com", "subject": "s", "text": "t", "html": "<p>h</p>"}),
    )
    .await;
    assert!(
        matches!(out, ActionOutcome::Success { .. }),
        "{out:?} {:?}",
        mg.refused()
    );
    assert_eq!(output(&out)["provider"], "mg");
    let tried: Vec<(&str, &str)> = deliveries
        .iter()
        .map(|d| (d.provider.as_str(), d.status))
        .collect();
    assert_eq!(tried, [("sg", "failed"), ("mg", "queued")]);
    assert_eq!(
        sg.refused()[0].0.body["custom_args"]["sojourn_key"],
        "exe_3/mail/1"
    );
    let m = &mg.accepted()[0];
    assert_eq!(
        m.field("v:sojourn-key"),
        "exe_3/mail/1",
        "the same key with the next provider"
    );
    assert_eq!(m.field("from"), "news@shop.test");
    assert_eq!(m.field("html"), "<p>h</p>");

    // A 502 may have been taken: not sent again elsewhere (the node's retry
    // policy decides), lest it go twice.
    sg.script([Answer::new(502, "Bad Gateway")]);
    let (out, deliveries) = send(
        &ch,
        "email.send",
        "exe_3/mail/1b",
        json!({"to": "ann@example.com", "subject": "s", "text": "t"}),
    )
    .await;
    assert!(failure(&out).1, "retryable");
    assert_eq!(
        deliveries.len(),
        1,
        "no failover after a 502: {deliveries:?}"
    );
    // Credentials refused: the provider's fault, not the message's, and
    // nothing was taken: the next provider sends it.
    sg.script([Answer::new(
        401,
        r#"{"errors":[{"message":"bad key","field":null,"help":null}]}"#,
    )]);
    let (out, deliveries) = send(
        &ch,
        "email.send",
        "exe_3/mail/1c",
        json!({"to": "ann@example.com", "subject": "s", "text": "t"}),
    )
    .await;
    assert_eq!(output(&out)["provider"], "mg", "{out:?}");
    assert_eq!(deliveries.len(), 2);

    // A permanent refusal does not fail over: another provider would refuse it too.
    let (out, deliveries) = send(
        &ch,
        "email.send",
        "exe_3/mail/2",
        json!({"to": "a@localhost", "subject": "s", "text": "t"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "invalid_recipient");
    assert_eq!(deliveries.len(), 1);

    // The burst of 4 is spent: the next send goes to mailgun without asking sendgrid.
    let before = sg.accepted().len() + sg.refused().len();
    let (out, deliveries) = send(
        &ch,
        "email.send",
        "exe_3/mail/3",
        json!({"to": "ann@example.com", "subject": "s", "text": "t"}),
    )
    .await;
    assert_eq!(output(&out)["provider"], "mg");
    assert_eq!(deliveries.len(), 1);
    assert_eq!(sg.accepted().len() + sg.refused().len(), before);
}

#[tokio::test]
async fn mailgun_sends_a_multipart_form_with_attachments() {
    let mg = Fake::mailgun("mg-key").await;
    let files = sojourn_testkit::Sink::start().await;
    let ch = channels(
        json!({"mg": {"kind": "mailgun", "domain": "mg.shop.test", "api_key": "mg-key", "from": "news@shop.test", "base_url": mg.url()}}),
        json!({"email": {"providers": ["mg"]}}),
    );
    let (out, _) = send(&ch, "email.send", "exe_4/mail/1",
        json!({"to": "ann@example.com, bob@example.com", "subject": "s", "text": "t", "reply_to": "help@shop.test",
            "headers": {"X-Campaign": "c"}, "attachments": [{"url": format!("{}/a.json", files.url()), "filename": "a.json"}]})).await;
    assert!(
        matches!(out, ActionOutcome::Success { .. }),
        "{out:?} {:?}",
        mg.refused()
    );
    assert!(
        output(&out)["message_id"]
            .as_str()
            .is_some_and(|id| id.ends_with("@mg.shop.test>"))
    );
    let r = &mg.accepted()[0];
    assert_eq!(r.path, "/v3/mg.shop.test/messages");
    assert_eq!(r.body["to"], json!(["ann@example.com", "bob@example.com"]));
    assert_eq!(r.field("h:Reply-To"), "help@shop.test");
    assert_eq!(r.field("h:X-Campaign"), "c");
    assert_eq!(r.body["attachment"][0]["filename"], "a.json");
    let (out, _) = send(
        &ch,
        "email.send",
        "exe_4/mail/2",
        json!({"to": "x@nowhere", "subject": "s", "text": "t"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "invalid_recipient");
}

#[tokio::test]
async fn twilio_and_vonage_send_sms_and_class_their_error_codes() {
    let tw = Fake::twilio("AC0123456789abcdef0123456789abcdef:tw-token").await;
    let vo = Fake::vonage("vk:vo-secret").await;
    let ch = channels(
        json!({
            "tw": {"kind": "twilio", "account_sid": "AC0123456789abcdef0123456789abcdef", "auth_token": "tw-token",
                   "from": "+15005550006", "base_url": tw.url(), "status_callback": "https://hooks.shop.test/v1/webhooks/twilio/tw"},
            "vo": {"kind": "vonage", "api_key": "vk", "api_secret": "vo-secret", "from": "Shop", "base_url": vo.url()},
        }),
        json!({"sms": {"providers": ["tw"]}}),
    );
    let (out, d) = send(
        &ch,
        "sms.send",
        "exe_5/sms/1",
        json!({"to": "+33 6 12 34 56 78", "body": "Hi"}),
    )
    .await;
    assert!(
        matches!(out, ActionOutcome::Success { .. }),
        "{out:?} {:?}",
        tw.refused()
    );
    assert!(
        output(&out)["message_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("SM"))
    );
    assert_eq!(d[0].status, "queued");
    let r = &tw.accepted()[0];
    assert_eq!(
        (r.field("To"), r.field("From"), r.field("Body")),
        ("+33612345678", "+15005550006", "Hi")
    );
    assert!(
        r.field("StatusCallback").ends_with("?key=exe_5%2Fsms%2F1"),
        "{}",
        r.field("StatusCallback")
    );
    for (to, class) in [
        ("+15005550001", "invalid_recipient"),
        ("+15005550004", "unsubscribed"),
        ("+15005550009", "invalid_recipient"),
    ] {
        let (out, _) = send(
            &ch,
            "sms.send",
            "exe_5/sms/2",
            json!({"to": to, "body": "Hi"}),
        )
        .await;
        assert!(!failure(&out).1);
        assert_eq!(output(&out)["class"], class, "{to}");
    }
    let (out, _) = send(
        &ch,
        "sms.send",
        "exe_5/sms/3",
        json!({"to": "+33612345678", "body": "Hi", "provider": "vo"}),
    )
    .await;
    assert!(
        matches!(out, ActionOutcome::Success { .. }),
        "{out:?} {:?}",
        vo.refused()
    );
    let r = &vo.accepted()[0];
    assert_eq!(
        (r.field("to"), r.field("client-ref")),
        ("33612345678", "exe_5/sms/3")
    );
    let (out, _) = send(
        &ch,
        "sms.send",
        "exe_5/sms/4",
        json!({"to": "+15005550006", "body": "Hi", "provider": "vo"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "invalid_recipient");
    assert_eq!(output(&out)["code"], "6");
    vo.script([Answer::new(200, r#"{"message-count":"1","messages":[{"status":"1","error-text":"Throughput Rate Exceeded"}]}"#)]);
    let (out, _) = send(
        &ch,
        "sms.send",
        "exe_5/sms/5",
        json!({"to": "+33612345678", "body": "Hi", "provider": "vo"}),
    )
    .await;
    assert!(failure(&out).1, "throttled is retryable");
}

#[tokio::test]
async fn slack_discord_and_teams_post_chat_messages() {
    let slack = Fake::slack("xoxb-bot").await;
    let discord = Fake::discord().await;
    let teams = Fake::teams().await;
    let ch = channels(
        json!({
            "hook": {"kind": "slack", "webhook_url": format!("{}/services/T0/B0/xyz", slack.url())},
            "bot": {"kind": "slack", "bot_token": "xoxb-bot", "base_url": slack.url()},
            "dc": {"kind": "discord", "webhook_url": format!("{}/api/webhooks/123/tok", discord.url())},
            "ms": {"kind": "teams", "webhook_url": format!("{}/webhookb2/abc", teams.url())},
        }),
        json!({"chat": {"providers": ["hook"]}}),
    );
    let (out, _) = send(&ch, "chat.send", "exe_6/chat/1",
        json!({"text": "Deploy done", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*done*"}}]})).await;
    assert!(matches!(out, ActionOutcome::Success { .. }), "{out:?}");
    assert_eq!(slack.accepted()[0].body["blocks"][0]["type"], "section");

    let (out, _) = send(
        &ch,
        "chat.send",
        "exe_6/chat/2",
        json!({"text": "hi", "channel": "#ops", "provider": "bot"}),
    )
    .await;
    assert_eq!(
        output(&out)["message_id"],
        "C0123456789/1700000000.000001",
        "{out:?}"
    );
    assert_eq!(
        slack.accepted()[1].body["metadata"]["event_payload"]["key"],
        "exe_6/chat/2"
    );
    let (out, _) = send(
        &ch,
        "chat.send",
        "exe_6/chat/3",
        json!({"text": "hi", "channel": "#gone", "provider": "bot"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "invalid_recipient");
    assert_eq!(output(&out)["code"], "channel_not_found");

    // Discord's webhook answers the message it posted.
    let (a, _) = send(
        &ch,
        "chat.send",
        "exe_6/chat/4",
        json!({"text": "hi", "provider": "dc"}),
    )
    .await;
    let (b, _) = send(
        &ch,
        "chat.send",
        "exe_6/chat/4",
        json!({"text": "hi", "provider": "dc"}),
    )
    .await;
    assert!(
        matches!(a, ActionOutcome::Success { .. }),
        "{a:?} {:?}",
        discord.refused()
    );
    assert!(output(&a)["message_id"].is_string() && output(&b)["message_id"].is_string());
    assert_eq!(discord.accepted()[0].query, "wait=true");
    discord.script([Answer::new(
        429,
        r#"{"message":"You are being rate limited.","retry_after":1.5,"global":false}"#,
    )]);
    let (out, _) = send(
        &ch,
        "chat.send",
        "exe_6/chat/5",
        json!({"text": "hi", "provider": "dc"}),
    )
    .await;
    assert_eq!(failure(&out).2, Some(1_500));

    let card = json!({"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock", "text": "hi"}]});
    let (out, _) = send(
        &ch,
        "chat.send",
        "exe_6/chat/6",
        json!({"card": card, "provider": "ms"}),
    )
    .await;
    assert!(
        matches!(out, ActionOutcome::Success { .. }),
        "{out:?} {:?}",
        teams.refused()
    );
    assert_eq!(teams.accepted()[0].body["attachments"][0]["content"], card);
}

#[tokio::test]
async fn bad_configurations_and_messages_are_refused_naming_the_field() {
    for (providers, channels, field) in [
        (
            json!({"m": {"kind": "smtp", "host": "h", "from": "not an address"}}),
            json!({}),
            "providers.m.from",
        ),
        (
            json!({"m": {"kind": "sendgrid", "api_key": "secret:NOPE", "from": "a@b.test"}}),
            json!({}),
            "providers.m.api_key",
        ),
        (
            json!({"m": {"kind": "twilio", "account_sid": "nope", "auth_token": "t", "from": "+1"}}),
            json!({}),
            "providers.m.account_sid",
        ),
        (
            json!({"m": {"kind": "log", "limits": {"per_second": 0}}}),
            json!({}),
            "providers.m.limits.per_second",
        ),
        (
            json!({"m": {"kind": "log"}}),
            json!({"email": {"providers": ["x"]}}),
            "channels.email.providers[0]",
        ),
        (
            json!({"m": {"kind": "discord", "webhook_url": "ftp://x"}}),
            json!({}),
            "providers.m.webhook_url",
        ),
        (
            json!({"m": {"kind": "log", "channels": ["email"]}}),
            json!({"sms": {"providers": ["m"]}}),
            "channels.sms.providers[0]",
        ),
    ] {
        let e = build(providers, channels).expect_err("refused");
        assert_eq!(e.field, field, "{e}");
    }
    let ch = channels(
        json!({"log": {"kind": "log"}}),
        json!({"email": {"providers": ["log"]}}),
    );
    let (out, d) = send(
        &ch,
        "email.send",
        "k",
        json!({"to": "nope", "subject": "s", "text": "t"}),
    )
    .await;
    assert!(failure(&out).0.starts_with("inputs.to:"));
    assert!(!failure(&out).1);
    assert!(d.is_empty(), "nothing was sent");
    let (out, _) = send(
        &ch,
        "sms.send",
        "k",
        json!({"to": "+33612345678", "body": "x"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "invalid", "no sms provider: {out:?}");
    let (out, _) = send(
        &ch,
        "email.send",
        "k",
        json!({"to": "a@b.test", "subject": "s", "text": "t", "provider": "other"}),
    )
    .await;
    assert!(failure(&out).0.contains("other"));
}

fn report<'a>(
    query: &'a str,
    headers: &'a reqwest::header::HeaderMap,
    body: &'a [u8],
) -> sojourn_actors::channels::Report<'a> {
    sojourn_actors::channels::Report {
        query,
        headers,
        body,
        now: chrono::Utc::now(),
    }
}

fn headers(pairs: &[(&str, String)]) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    h
}

#[test]
fn sendgrid_reports_are_taken_only_with_a_valid_fresh_signature() {
    use base64::Engine as _;
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::EncodePublicKey;
    let b64 = base64::engine::general_purpose::STANDARD;
    let signing = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).expect("a key");
    let public = b64.encode(
        p256::PublicKey::from(signing.verifying_key())
            .to_public_key_der()
            .expect("DER")
            .as_bytes(),
    );
    let ch = channels(
        json!({"sg": {"kind": "sendgrid", "api_key": "k", "from": "a@b.test", "webhook_public_key": public},
               "bare": {"kind": "sendgrid", "api_key": "k", "from": "a@b.test"}}),
        json!({}),
    );
    let body = json!([
        {"email": "ann@example.com", "event": "delivered", "sg_message_id": "abc123.filterdrecv-1.0", "timestamp": 1},
        {"email": "ann@example.com", "event": "open", "sg_message_id": "abc123.filterdrecv-1.0", "timestamp": 2},
        {"email": "bob@example.com", "event": "processed", "sg_message_id": "def.x", "timestamp": 3},
    ])
    .to_string();
    let sign = |ts: &str, body: &str| {
        let sig: p256::ecdsa::Signature = signing.sign(format!("{ts}{body}").as_bytes());
        b64.encode(sig.to_der().as_bytes())
    };
    let ts = chrono::Utc::now().timestamp().to_string();
    let h = headers(&[
        ("X-Twilio-Email-Event-Webhook-Signature", sign(&ts, &body)),
        ("X-Twilio-Email-Event-Webhook-Timestamp", ts.clone()),
    ]);
    let v = ch
        .verify_report("sg", &report("", &h, body.as_bytes()))
        .expect("verified");
    let got: Vec<(&str, &str)> = v
        .updates
        .iter()
        .map(|u| (u.message_id.as_str(), u.status))
        .collect();
    assert_eq!(got, [("abc123", "delivered"), ("abc123", "opened")]);
    // The same body under another timestamp is another receipt; a replay is the same one.
    let again = ch
        .verify_report("sg", &report("", &h, body.as_bytes()))
        .expect("verified");
    assert_eq!(v.receipt, again.receipt);
    // The same events signed at another time (a provider's retry) are
    // another receipt; statuses only move up, so applying them twice is
    // harmless.
    let later = (chrono::Utc::now().timestamp() - 60).to_string();
    let h2 = headers(&[
        (
            "X-Twilio-Email-Event-Webhook-Signature",
            sign(&later, &body),
        ),
        ("X-Twilio-Email-Event-Webhook-Timestamp", later),
    ]);
    let retried = ch
        .verify_report("sg", &report("", &h2, body.as_bytes()))
        .expect("verified");
    assert_ne!(v.receipt, retried.receipt);

    use sojourn_actors::channels::ReportError;
    let tampered = body.replace("delivered", "bounce");
    assert!(matches!(
        ch.verify_report("sg", &report("", &h, tampered.as_bytes())),
        Err(ReportError::Forged(_))
    ));
    let old = (chrono::Utc::now().timestamp() - 2 * 86_400).to_string();
    let stale = headers(&[
        ("X-Twilio-Email-Event-Webhook-Signature", sign(&old, &body)),
        ("X-Twilio-Email-Event-Webhook-Timestamp", old),
    ]);
    assert!(matches!(
        ch.verify_report("sg", &report("", &stale, body.as_bytes())),
        Err(ReportError::Stale(_))
    ));
    assert!(matches!(
        ch.verify_report("sg", &report("", &headers(&[]), body.as_bytes())),
        Err(ReportError::Forged(_))
    ));
    assert!(matches!(
        ch.verify_report("bare", &report("", &h, body.as_bytes())),
        Err(ReportError::NotConfigured(_))
    ));
    assert!(matches!(
        ch.verify_report("nope", &report("", &h, body.as_bytes())),
        Err(ReportError::UnknownProvider(_))
    ));
}

#[test]
fn mailgun_and_twilio_reports_are_checked_against_their_keys() {
    use base64::Engine as _;
    use hmac::{KeyInit, Mac};
    use sojourn_actors::channels::ReportError;
    let ch = channels(
        json!({
            "mg": {"kind": "mailgun", "domain": "mg.test", "api_key": "k", "from": "a@b.test", "webhook_signing_key": "mg-signing"},
            "tw": {"kind": "twilio", "account_sid": "AC1", "auth_token": "tw-token", "from": "+15005550006",
                   "status_callback": "https://hooks.shop.test/v1/webhooks/tw"},
            "log": {"kind": "log"},
        }),
        json!({}),
    );
    let mg_body = |ts: &str, token: &str, key: &str, event: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("key");
        mac.update(format!("{ts}{token}").as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        json!({"signature": {"timestamp": ts, "token": token, "signature": signature},
               "event-data": {"event": event, "severity": "permanent",
                              "message": {"headers": {"message-id": "20261206.1@mg.test"}}}})
        .to_string()
    };
    let now = chrono::Utc::now().timestamp().to_string();
    let none = headers(&[]);
    let body = mg_body(&now, "tok-1", "mg-signing", "failed");
    let v = ch
        .verify_report("mg", &report("", &none, body.as_bytes()))
        .expect("verified");
    assert_eq!(v.receipt, "tok-1");
    assert_eq!(v.updates[0].message_id, "<20261206.1@mg.test>");
    assert_eq!(v.updates[0].status, "bounced");
    let forged = mg_body(&now, "tok-2", "not-the-key", "delivered");
    assert!(matches!(
        ch.verify_report("mg", &report("", &none, forged.as_bytes())),
        Err(ReportError::Forged(_))
    ));
    let old = (chrono::Utc::now().timestamp() - 2 * 86_400).to_string();
    let stale = mg_body(&old, "tok-3", "mg-signing", "delivered");
    assert!(matches!(
        ch.verify_report("mg", &report("", &none, stale.as_bytes())),
        Err(ReportError::Stale(_))
    ));

    // Twilio: the URL it called (with our ?key=) and the sorted form.
    let query = "key=exe_1%2Fsms%2F1";
    let form = "MessageStatus=delivered&MessageSid=SM0001&To=%2B33612345678&AccountSid=AC1";
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"tw-token").expect("key");
    mac.update(format!("https://hooks.shop.test/v1/webhooks/tw?{query}").as_bytes());
    for (k, v) in [
        ("AccountSid", "AC1"),
        ("MessageSid", "SM0001"),
        ("MessageStatus", "delivered"),
        ("To", "+33612345678"),
    ] {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let h = headers(&[
        ("X-Twilio-Signature", signature.clone()),
        ("I-Twilio-Idempotency-Token", "itok-1".into()),
    ]);
    let v = ch
        .verify_report("tw", &report(query, &h, form.as_bytes()))
        .expect("verified");
    assert_eq!(
        (v.updates[0].message_id.as_str(), v.updates[0].status),
        ("SM0001", "delivered")
    );
    assert_ne!(
        v.receipt, "itok-1",
        "the unsigned header is not the receipt"
    );
    let h_other = headers(&[
        ("X-Twilio-Signature", signature.clone()),
        ("I-Twilio-Idempotency-Token", "itok-2".into()),
    ]);
    let replay = ch
        .verify_report("tw", &report(query, &h_other, form.as_bytes()))
        .expect("verified");
    assert_eq!(
        replay.receipt, v.receipt,
        "a replay under another header is the same receipt"
    );
    let other_query = "key=exe_2%2Fsms%2F1";
    assert!(matches!(
        ch.verify_report("tw", &report(other_query, &h, form.as_bytes())),
        Err(ReportError::Forged(_))
    ));
    let tampered = form.replace("delivered", "undelivered");
    assert!(matches!(
        ch.verify_report("tw", &report(query, &h, tampered.as_bytes())),
        Err(ReportError::Forged(_))
    ));
    assert!(matches!(
        ch.verify_report("log", &report("", &h, b"")),
        Err(ReportError::NotSupported)
    ));
}

#[tokio::test]
async fn fcm_apns_and_web_push_send_with_their_tokens_keys_and_encryption() {
    use sojourn_testkit::fakes;
    let fcm = Fake::fcm().await;
    let apns = Fake::apns().await;
    let push = Fake::push_service().await;
    let ch = channels(
        json!({
            "fcm": {"kind": "fcm", "service_account": fakes::fcm_service_account(&fcm.url()).to_string(), "base_url": fcm.url()},
            "apns": {"kind": "apns", "team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": fakes::APNS_TEST_PRIVATE_KEY,
                     "topic": "test.sojourn.app", "base_url": apns.url()},
            "web": {"kind": "webpush", "subject": "mailto:ops@shop.test",
                    "vapid_private_key": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"},
        }),
        json!({"push": {"providers": ["fcm"]}}),
    );
    // FCM: one OAuth2 token for both sends (cached), data as strings, the key in data.
    for n in 1..=2 {
        let (out, _) = send(&ch, "push.send", &format!("exe_7/push/{n}"),
            json!({"to": "device-abc", "title": "Sale", "body": "Today only", "data": {"sku": 42}, "badge": 3})).await;
        assert!(
            matches!(out, ActionOutcome::Success { .. }),
            "{out:?} {:?}",
            fcm.refused()
        );
        assert!(
            output(&out)["message_id"]
                .as_str()
                .is_some_and(|m| m.starts_with("projects/sojourn-test/messages/"))
        );
    }
    assert_eq!(fcm.tokens_issued(), 1, "the access token is cached");
    let accepted = fcm.accepted();
    let m = &accepted.last().expect("a send").body["message"];
    assert_eq!(m["notification"]["title"], "Sale");
    assert_eq!(m["data"]["sku"], "42");
    assert_eq!(m["data"]["sojourn_key"], "exe_7/push/2");
    assert_eq!(m["apns"]["payload"]["aps"]["badge"], 3);
    let (out, _) = send(
        &ch,
        "push.send",
        "exe_7/push/3",
        json!({"to": "unregistered", "body": "x"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "invalid_recipient");
    assert_eq!(output(&out)["code"], "UNREGISTERED");
    // A refused token is made again on the next try.
    fcm.script([Answer::new(
        401,
        r#"{"error":{"code":401,"status":"UNAUTHENTICATED","message":"expired"}}"#,
    )]);
    let (out, _) = send(
        &ch,
        "push.send",
        "exe_7/push/4",
        json!({"to": "device-abc", "body": "x"}),
    )
    .await;
    assert!(failure(&out).1, "a refused token is retryable");
    let (out, _) = send(
        &ch,
        "push.send",
        "exe_7/push/4",
        json!({"to": "device-abc", "body": "x"}),
    )
    .await;
    assert!(matches!(out, ActionOutcome::Success { .. }), "{out:?}");
    assert_eq!(fcm.tokens_issued(), 2);

    // APNs: HTTP/2, a provider token, the attempt's key as a stable apns-id.
    let (a, _) = send(&ch, "push.send", "exe_8/push/1", json!({"to": "a1b2c3", "title": "Hi", "body": "There", "sound": "default", "provider": "apns"})).await;
    assert!(
        matches!(a, ActionOutcome::Success { .. }),
        "{a:?} {:?}",
        apns.refused()
    );
    let (b, _) = send(
        &ch,
        "push.send",
        "exe_8/push/1",
        json!({"to": "a1b2c3", "title": "Hi", "body": "There", "provider": "apns"}),
    )
    .await;
    assert_eq!(
        output(&a)["message_id"],
        output(&b)["message_id"],
        "a re-send carries the same apns-id"
    );
    let r = &apns.accepted()[0];
    assert_eq!(r.version, "HTTP/2.0");
    assert_eq!(r.path, "/3/device/a1b2c3");
    assert_eq!(r.header("apns-topic"), "test.sojourn.app");
    assert_eq!(r.header("apns-push-type"), "alert");
    assert_eq!(r.body["aps"]["alert"]["title"], "Hi");
    assert_eq!(r.body["aps"]["sound"], "default");
    let (out, _) = send(
        &ch,
        "push.send",
        "exe_8/push/2",
        json!({"to": "dead", "body": "x", "provider": "apns"}),
    )
    .await;
    assert_eq!(output(&out)["code"], "Unregistered");
    assert_eq!(output(&out)["class"], "invalid_recipient");

    // Web Push: encrypted for the subscription, signed with VAPID.
    let sub = fakes::push_subscription(&push.url(), "/push/sub-1");
    let (out, _) = send(&ch, "push.send", "exe_9/push/1",
        json!({"subscription": sub, "title": "Back in stock", "data": {"url": "/p/1"}, "provider": "web"})).await;
    assert!(
        matches!(out, ActionOutcome::Success { .. }),
        "{out:?} {:?}",
        push.refused()
    );
    let payload = fakes::decrypted_push(&push.accepted()[0]);
    assert_eq!(payload["title"], "Back in stock");
    assert_eq!(payload["data"]["url"], "/p/1");
    assert_eq!(payload["key"], "exe_9/push/1");
    let gone = fakes::push_subscription(&push.url(), "/push/gone");
    let (out, _) = send(
        &ch,
        "push.send",
        "exe_9/push/2",
        json!({"subscription": gone, "body": "x", "provider": "web"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "invalid_recipient");
    // A device token is not a browser subscription, and the reverse.
    let (out, _) = send(
        &ch,
        "push.send",
        "exe_9/push/3",
        json!({"to": "device", "body": "x", "provider": "web"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "invalid");
}

#[tokio::test]
async fn a_web_push_endpoint_inside_the_network_is_refused_by_the_egress_guard() {
    let push = Fake::push_service().await;
    let providers: BTreeMap<String, ProviderConfig> = serde_json::from_value(json!({
        "web": {"kind": "webpush", "subject": "mailto:ops@shop.test",
                "vapid_private_key": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc"}
    }))
    .expect("config");
    let ch = Channels::build(
        &providers,
        &BTreeMap::new(),
        &Context {
            secrets: sojourn_actors::Secrets::default(),
            cluster: None,
            egress: EgressPolicy::strict(),
        },
    )
    .expect("builds");
    let sub = sojourn_testkit::fakes::push_subscription(&push.url(), "/push/x");
    let (out, _) = send(
        &ch,
        "push.send",
        "k",
        json!({"subscription": sub, "body": "x", "provider": "web"}),
    )
    .await;
    let (error, retryable, _) = failure(&out);
    assert!(!retryable, "{error}");
    assert_eq!(output(&out)["class"], "invalid", "{error}");
    assert!(
        error.contains("127.0.0.1") || error.contains("loopback"),
        "the guard's refusal: {error}"
    );
    assert!(
        push.accepted().is_empty() && push.refused().is_empty(),
        "nothing reached it"
    );
}

#[tokio::test]
async fn ses_and_sns_sign_their_requests_with_sigv4() {
    let ses = Fake::ses("AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").await;
    let sns = Fake::sns("AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").await;
    let ch = channels(
        json!({
            "ses": {"kind": "ses", "region": "us-east-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
                    "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "from": "news@shop.test",
                    "configuration_set": "events", "endpoint": ses.url()},
            "sns": {"kind": "sns", "region": "us-east-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
                    "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "sender_id": "SHOP", "endpoint": sns.url()},
            "ses-wrong": {"kind": "ses", "region": "us-east-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
                    "secret_access_key": "not-the-secret-key", "from": "news@shop.test", "endpoint": ses.url()},
        }),
        json!({"email": {"providers": ["ses"]}, "sms": {"providers": ["sns"]}}),
    );
    let (out, d) = send(
        &ch,
        "email.send",
        "exe_10/mail/1",
        json!({"to": "ann@example.com", "subject": "Hi", "text": "t", "html": "<p>h</p>"}),
    )
    .await;
    assert!(
        matches!(out, ActionOutcome::Success { .. }),
        "{out:?} {:?}",
        ses.refused()
    );
    assert_eq!(d[0].status, "queued");
    let r = &ses.accepted()[0];
    assert_eq!(
        r.body["EmailTags"][0],
        json!({"Name": "sojourn_key", "Value": "exe_10-mail-1"})
    );
    assert_eq!(r.body["ConfigurationSetName"], "events");
    use base64::Engine as _;
    let mime = base64::engine::general_purpose::STANDARD
        .decode(r.body["Content"]["Raw"]["Data"].as_str().expect("raw"))
        .expect("base64");
    let parsed = mail_parser::MessageParser::default()
        .parse(&mime)
        .expect("MIME");
    assert_eq!(parsed.message_id(), Some("exe_10/mail/1@shop.test"));
    let (out, _) = send(
        &ch,
        "email.send",
        "exe_10/mail/2",
        json!({"to": "bounce@example.com", "subject": "s", "text": "t"}),
    )
    .await;
    assert_eq!(output(&out)["code"], "MessageRejected");
    assert!(!failure(&out).1);
    let (out, d) = send(
        &ch,
        "email.send",
        "exe_10/mail/3",
        json!({"to": "ann@example.com", "subject": "s", "text": "t", "provider": "ses-wrong"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "auth", "{out:?}");
    assert!(!format!("{out:?}{d:?}").contains("not-the-secret-key"));
    ses.script([
        Answer::new(429, r#"{"message":"Maximum sending rate exceeded."}"#)
            .header("x-amzn-ErrorType", "TooManyRequestsException"),
    ]);
    let (out, _) = send(
        &ch,
        "email.send",
        "exe_10/mail/4",
        json!({"to": "ann@example.com", "subject": "s", "text": "t"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "rate_limited");

    let (out, _) = send(
        &ch,
        "sms.send",
        "exe_10/sms/1",
        json!({"to": "+33612345678", "body": "Hi"}),
    )
    .await;
    assert!(
        matches!(out, ActionOutcome::Success { .. }),
        "{out:?} {:?}",
        sns.refused()
    );
    assert!(
        output(&out)["message_id"]
            .as_str()
            .is_some_and(|m| m.starts_with("sns-"))
    );
    let r = &sns.accepted()[0];
    assert_eq!(
        r.field("MessageAttributes.entry.1.Value.StringValue"),
        "Transactional"
    );
    assert_eq!(
        r.field("MessageAttributes.entry.2.Value.StringValue"),
        "SHOP"
    );
    let (out, _) = send(
        &ch,
        "sms.send",
        "exe_10/sms/2",
        json!({"to": "+15005550001", "body": "Hi"}),
    )
    .await;
    assert_eq!(output(&out)["class"], "invalid_recipient");
    assert_eq!(output(&out)["code"], "InvalidParameter");
}

/// Two workers (each its own Redis connection, as two processes have)
/// sharing one provider's limit: together they never exceed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_workers_sharing_redis() {
    let sink = sojourn_testkit::Sink::start().await;
    let name = format!("limited-{}", uuid::Uuid::now_v7().simple());
    let per_second = 20.0;
    let make = |n: u32| {
        let cluster = sojourn_actors::Cluster::redis(
            "redis://127.0.0.1:6379",
            format!("worker-{n}"),
            std::time::Duration::from_secs(5),
        )
        .expect("redis");
        let providers: BTreeMap<String, ProviderConfig> = serde_json::from_value(json!({
            name.clone(): {"kind": "webhook", "url": format!("{}/send", sink.url()),
                           "limits": {"per_second": per_second, "burst": 1}}
        }))
        .expect("config");
        Channels::build(
            &providers,
            &BTreeMap::new(),
            &Context {
                secrets: sojourn_actors::Secrets::default(),
                cluster: Some(std::sync::Arc::new(cluster)),
                egress: EgressPolicy::allowing_loopback(),
            },
        )
        .expect("builds")
    };
    let workers = [std::sync::Arc::new(make(1)), std::sync::Arc::new(make(2))];
    let started = std::time::Instant::now();
    let window = std::time::Duration::from_secs(2);
    let mut tasks = Vec::new();
    for (w, ch) in workers.iter().enumerate() {
        for t in 0..4 {
            let ch = ch.clone();
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0;
                while started.elapsed() < window {
                    let (out, _) = send(
                        &ch,
                        "chat.send",
                        &format!("k/{w}/{t}/{n}"),
                        json!({"text": "x", "provider": name}),
                    )
                    .await;
                    assert!(matches!(out, ActionOutcome::Success { .. }), "{out:?}");
                    n += 1;
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("sender");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent = sink.count() as f64;
    let ceiling = per_second * elapsed + 2.0;
    assert!(
        sent <= ceiling,
        "{sent} sends in {elapsed:.2}s exceed {per_second}/s (at most {ceiling:.0})"
    );
    assert!(
        sent >= per_second * 2.0 * 0.5,
        "{sent} sends in {elapsed:.2}s: the limit starves the workers"
    );
}

/// Twilio's own documented example (its API snippets): the auth token
/// `12345`, this URL and these parameters sign as
/// `GvWf1cFY/Q7PnoempGyD5oXAezc=`.
#[test]
fn twilio_signatures_verify_against_twilios_published_example() {
    let ch = channels(
        json!({"tw": {"kind": "twilio", "account_sid": "AC1", "auth_token": "12345", "from": "+15005550006",
                      "status_callback": "https://mycompany.com/myapp.php"}}),
        json!({}),
    );
    let form = "CallSid=CA1234567890ABCDE&Caller=%2B14158675310&Digits=1234&From=%2B14158675310&To=%2B18005551212";
    let h = headers(&[("X-Twilio-Signature", "GvWf1cFY/Q7PnoempGyD5oXAezc=".into())]);
    let v = ch
        .verify_report("tw", &report("foo=1&bar=2", &h, form.as_bytes()))
        .expect("Twilio's example verifies");
    assert!(
        v.updates.is_empty(),
        "a call's parameters, no message status"
    );
    // The same parameters in another order and encoding: the same receipt.
    let reordered = "To=%2b18005551212&From=%2B14158675310&Digits=1234&Caller=%2B14158675310&CallSid=CA1234567890ABCDE";
    let again = ch
        .verify_report("tw", &report("foo=1&bar=2", &h, reordered.as_bytes()))
        .expect("verifies");
    assert_eq!(
        v.receipt, again.receipt,
        "a replay is known whatever its encoding"
    );
}

#[test]
fn mailgun_receipts_are_kept_per_signing_key_and_sendgrid_per_signature() {
    let ch = channels(
        json!({
            "mg-a": {"kind": "mailgun", "domain": "a.test", "api_key": "k", "from": "a@b.test", "webhook_signing_key": "account-key"},
            "mg-b": {"kind": "mailgun", "domain": "b.test", "api_key": "k", "from": "a@b.test", "webhook_signing_key": "account-key"},
        }),
        json!({}),
    );
    let body =
        sojourn_testkit::fakes::mailgun_report("account-key", "tok-9", "delivered", "m1@a.test")
            .to_string();
    let none = headers(&[]);
    let a = ch
        .verify_report("mg-a", &report("", &none, body.as_bytes()))
        .expect("a");
    let b = ch
        .verify_report("mg-b", &report("", &none, body.as_bytes()))
        .expect("b");
    assert!(a.scope.is_some());
    assert_eq!(
        a.scope, b.scope,
        "one key, one place for its receipts: a report for A replayed to B is known"
    );
    assert!(!a.scope.as_deref().unwrap_or("").contains("account-key"));
}

#[tokio::test]
async fn ses_events_through_sns_are_taken_only_when_sns_signed_them() {
    use sojourn_actors::channels::ReportError;
    use sojourn_testkit::fakes;
    let certs = fakes::sns_cert_server().await;
    let topic = "arn:aws:sns:us-east-1:123456789012:ses-events";
    let ch = channels(
        json!({"ses": {"kind": "ses", "region": "us-east-1", "access_key_id": "AKIAIOSFODNN7EXAMPLE",
                       "secret_access_key": "s", "from": "news@shop.test",
                       "events_topic_arn": topic, "sns_cert_url_prefix": format!("{certs}/")}}),
        json!({}),
    );
    let event = json!({"eventType": "Bounce", "bounce": {"bounceType": "Permanent"},
                       "mail": {"messageId": "0100018c-ses-1"}});
    let body = fakes::sns_message(topic, &event, &certs, "m-1").to_string();
    let none = headers(&[]);
    let v = ch
        .check_report("ses", &report("", &none, body.as_bytes()))
        .await
        .expect("SNS signed it");
    assert_eq!(v.receipt, "m-1");
    assert_eq!(
        (v.updates[0].message_id.as_str(), v.updates[0].status),
        ("0100018c-ses-1", "bounced")
    );
    // Tampered: the event says delivered instead.
    let tampered = body.replace("Permanent", "Transient");
    assert!(matches!(
        ch.check_report("ses", &report("", &none, tampered.as_bytes()))
            .await,
        Err(ReportError::Forged(_))
    ));
    // Another topic, or a certificate from anywhere else: refused.
    let other =
        fakes::sns_message("arn:aws:sns:us-east-1:1:other", &event, &certs, "m-2").to_string();
    assert!(matches!(
        ch.check_report("ses", &report("", &none, other.as_bytes()))
            .await,
        Err(ReportError::Forged(_))
    ));
    let elsewhere = fakes::sns_message(topic, &event, "http://127.0.0.1:1", "m-3").to_string();
    assert!(matches!(
        ch.check_report("ses", &report("", &none, elsewhere.as_bytes()))
            .await,
        Err(ReportError::Forged(_))
    ));
}
