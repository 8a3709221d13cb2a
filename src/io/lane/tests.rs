//! The lane's two promises, on tokio's current-thread runtime (one core): a piece of work
//! starts only after the sessions whose sockets were ready, and pieces go one at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::Lane;

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// Ten established sessions wait on their sockets; bytes arrive for all of them, then a
/// handshake (a task, as in the sidecar) asks the lane for its turn. By the time it gets it, each session has read its
/// bytes: the runtime looked at the sockets before letting the handshake's work run.
#[tokio::test(flavor = "current_thread")]
async fn sessions_with_bytes_waiting_run_before_the_handshake() {
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..10 {
        let (client, mut server) = pair().await;
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let mut b = [0u8; 16];
            if server.read(&mut b).await.unwrap() > 0 {
                served.fetch_add(1, Ordering::SeqCst);
            }
        });
        clients.push(client);
    }
    // Every session task runs up to its wait on the socket.
    tokio::task::yield_now().await;
    for client in &mut clients {
        client.write_all(b"MAIL FROM:<>\r\n").await.unwrap();
    }
    // Give the kernel the bytes' way through loopback, without letting the runtime run.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(served.load(Ordering::SeqCst), 0, "no session ran yet");
    // A handshake is a task of its own, as every session is.
    let handshake = tokio::spawn(async move {
        let lane = Lane::new(1);
        let _turn = lane.enter().await;
        served.load(Ordering::SeqCst)
    });
    assert_eq!(handshake.await.unwrap(), 10);
}

/// With one place, a second piece of work waits until the first permit is dropped.
#[tokio::test(flavor = "current_thread")]
async fn one_piece_at_a_time_per_place() {
    let lane = Arc::new(Lane::new(1));
    let first = lane.enter().await;
    assert!(first.is_some());
    let second = {
        let lane = Arc::clone(&lane);
        tokio::spawn(async move { lane.enter().await.is_some() })
    };
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        !second.is_finished(),
        "waits while the first holds the place"
    );
    drop(first);
    assert!(second.await.unwrap());
}

/// A place per worker thread of the runtime the lane is made in.
#[test]
fn a_place_per_worker_of_the_runtime() {
    let one = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(
        one.block_on(async { Lane::for_this_runtime().0.available_permits() }),
        1
    );
    let three = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .build()
        .unwrap();
    assert_eq!(
        three.block_on(async { Lane::for_this_runtime().0.available_permits() }),
        3
    );
}
