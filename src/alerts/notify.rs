//! Where notifications go: the app (a channel its backend turns into
//! toasts), the desktop (the OS notification service, where there is
//! one), a webhook (a JSON POST, retried), and the log.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::rule::Severity;
use super::state::{Reason, State};

/// One notification.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Notification {
    /// The rule's name.
    pub rule: String,
    /// Its file.
    pub file: String,
    /// How bad.
    pub severity: Severity,
    /// Why now.
    pub reason: Reason,
    /// The rule's state.
    pub state: State,
    /// The value, when there is one.
    pub value: Option<f64>,
    /// The value as the rule writes it.
    pub value_text: String,
    /// One line for people ("Payment failure rate is firing: 24.1 % (above 0.1)").
    pub summary: String,
    /// When (evaluation time).
    pub at: DateTime<Utc>,
}

/// Tries of one webhook POST before it is given up (logged).
pub const WEBHOOK_TRIES: u32 = 4;

/// Where notifications go.
#[derive(Clone, Default)]
pub struct Notifier {
    /// The app's channel.
    pub app: Option<mpsc::UnboundedSender<Notification>>,
    /// A URL to POST each notification to as JSON.
    pub webhook: Option<url::Url>,
    /// Show desktop notifications.
    pub desktop: bool,
    client: Option<reqwest::Client>,
    /// Webhook deliveries that failed every try (for the app and tests).
    pub failed_webhooks: Arc<std::sync::atomic::AtomicU64>,
    /// Webhook deliveries and desktop notifications still under way.
    in_flight: Arc<std::sync::atomic::AtomicU64>,
}

impl Notifier {
    /// A notifier to the given places. A webhook must be `http` or `https`.
    pub fn new(
        app: Option<mpsc::UnboundedSender<Notification>>,
        webhook: Option<url::Url>,
        desktop: bool,
    ) -> Result<Self, String> {
        if let Some(u) = &webhook {
            if !matches!(u.scheme(), "http" | "https") {
                // Not the URL itself: it may carry a token.
                return Err(format!(
                    "the webhook is a {}: URL; give an http:// or https:// URL",
                    u.scheme()
                ));
            }
        }
        // Every rustls client here uses ring (it may be installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = match &webhook {
            Some(_) => Some(
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("salespulse/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("webhook client: {e}"))?,
            ),
            None => None,
        };
        Ok(Notifier {
            app,
            webhook,
            desktop,
            client,
            failed_webhooks: Arc::default(),
            in_flight: Arc::default(),
        })
    }

    /// Sends `n` everywhere; the webhook and the desktop in the background.
    pub fn send(&self, n: &Notification) {
        match n.reason {
            Reason::Firing | Reason::Repeat | Reason::Error => {
                tracing::warn!(rule = %n.rule, "{}", n.summary)
            }
            Reason::Resolved | Reason::NoData => tracing::info!(rule = %n.rule, "{}", n.summary),
        }
        if let Some(app) = &self.app {
            // The app gone is not an error of the evaluator.
            let _ = app.send(n.clone());
        }
        if let (Some(url), Some(client)) = (&self.webhook, &self.client) {
            let (url, client, body) = (url.clone(), client.clone(), n.clone());
            let failed = Arc::clone(&self.failed_webhooks);
            let done = InFlight::start(&self.in_flight);
            tokio::spawn(async move {
                if let Err(e) = post(&client, &url, &body).await {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!("webhook for {:?}: {e}", body.rule);
                }
                drop(done);
            });
        }
        if self.desktop {
            let (title, body) = (format!("salespulse: {}", n.rule), n.summary.clone());
            let done = InFlight::start(&self.in_flight);
            tokio::task::spawn_blocking(move || {
                desktop(&title, &body);
                drop(done);
            });
        }
    }

    /// Waits until every delivery under way has ended (sent or given up),
    /// at most `max`; false if some were still under way then.
    pub async fn settle(&self, max: Duration) -> bool {
        let until = tokio::time::Instant::now() + max;
        loop {
            if self.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One delivery under way, counted until dropped (also when its task
/// panics or is cancelled).
struct InFlight(Arc<std::sync::atomic::AtomicU64>);

impl InFlight {
    fn start(count: &Arc<std::sync::atomic::AtomicU64>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// POSTs `n` as JSON, retrying (1 s, 2 s, 4 s apart) on a connection error
/// or a 5xx/429 answer; another 4xx is not retried.
pub async fn post(
    client: &reqwest::Client,
    url: &url::Url,
    n: &Notification,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..WEBHOOK_TRIES {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        match client.post(url.clone()).json(n).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => {
                let s = r.status();
                last = format!("answered {s}");
                if s.is_client_error() && s != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    return Err(last);
                }
            }
            // Without the URL: it may carry a token.
            Err(e) => last = e.without_url().to_string(),
        }
    }
    Err(format!("gave up after {WEBHOOK_TRIES} tries: {last}"))
}

/// Shows a desktop notification; where the desktop has no notification
/// service (a server, CI) it is logged once and skipped.
fn desktop(title: &str, body: &str) {
    let r = notify_rust::Notification::new()
        .summary(title)
        .body(body)
        .appname("salespulse")
        .show();
    if let Err(e) = r {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| tracing::info!("no desktop notifications here: {e}"));
    }
}
