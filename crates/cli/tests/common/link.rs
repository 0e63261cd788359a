//! A TCP link the test can cut, standing for a network partition between
//! two processes on loopback.

/// What the link does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Bytes flow.
    Open,
    /// Open connections are closed, new ones closed at once (a peer that
    /// refuses: errors come at once).
    Cut,
    /// Nothing moves, nothing is closed: connections and new ones hang,
    /// as when a partition drops packets silently (errors come only from
    /// the peers' own timeouts). Held connections are closed when the
    /// link opens again.
    Blackhole,
}

/// A TCP proxy on loopback to `to` (keeping its scheme) that can be cut.
pub struct Link {
    pub url: String,
    state: tokio::sync::watch::Sender<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    pub async fn to(url: &str) -> Link {
        let (scheme, to) = url.split_once("://").unwrap_or(("http", url));
        let to = to.to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (state, _) = tokio::sync::watch::channel(State::Open);
        let watch = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut state = watch.subscribe();
                let now = *state.borrow_and_update();
                let to = to.clone();
                tokio::spawn(async move {
                    match now {
                        State::Cut => return,
                        State::Blackhole => {
                            let _ = state.wait_for(|s| *s != State::Blackhole).await;
                            return;
                        }
                        State::Open => {}
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await else {
                        return;
                    };
                    let stopped = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        s = state.wait_for(|s| *s != State::Open) => s.map(|s| *s),
                    };
                    if matches!(stopped, Ok(State::Blackhole)) {
                        // Hold both ends, moving nothing, until it opens.
                        let _ = state.wait_for(|s| *s != State::Blackhole).await;
                    }
                });
            }
        });
        Link { url, state, task }
    }

    /// Cuts the link (`true`) or opens it again.
    pub fn set_cut(&self, cut: bool) {
        self.set(if cut { State::Cut } else { State::Open });
    }

    pub fn set(&self, state: State) {
        self.state.send_replace(state);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}
