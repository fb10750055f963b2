vcl 4.1;
# livecam behind Varnish: many viewers, one origin request per frame.
#
#   viewers -> (TLS: nginx-tls.conf) -> Varnish :6081 -> livecam :8080 <- camera
#
# The long-poll URL is the cache key: every viewer that asks `/next.jpeg?after=N`
# wants the same thing, any frame newer than N. The first such request goes to
# livecam and waits there for the next frame; the others wait on Varnish's
# waiting list for that one fetch and are all answered when it returns
# (request coalescing). livecam marks those answers
# `Cache-Control: public, max-age=0, s-maxage=2`, so late askers of the same key
# get the same frame from the cache for 2 s and browsers keep nothing.
#
# Everything else goes to livecam untouched: uploads, /live.jpeg (no-cache),
# /status, /metrics, pages; /stream.mjpg and the WebSockets are piped (one TCP
# tunnel per viewer: that path does not scale out, the long-poll page does).
#
# Written for Varnish 7.1 (Debian 12) and later. Run it in the foreground:
#   varnishd -F -n /tmp/livecam-varnish -a 127.0.0.1:6081 -f $PWD/deploy/varnish.vcl \
#            -s malloc,256m -p pipe_timeout=3600
# The backend below is livecam's default address; deploy/run-edge.sh and the
# tests substitute their own ports.

import std;

backend livecam {
    .host = "127.0.0.1";
    .port = "8080";
    .connect_timeout = 2s;
    # Above livecam's longest long-poll (60 s): a held request is not an error.
    .first_byte_timeout = 75s;
    .between_bytes_timeout = 10s;
}

sub vcl_recv {
    # /ws (viewer) and /upload/ws (camera): a tunnel, never cached.
    if (req.http.Upgrade ~ "(?i)websocket") {
        return (pipe);
    }
    # Endless multipart streams: a tunnel too. Passing them would buffer the
    # whole stream in transient storage.
    if (req.method == "GET" &&
        (req.url ~ "^/(cams/[^/?]+/)?stream\.mjpg(\?|$)" ||
         req.url ~ "^/(cams/[^/?]+/)?\?(.*&)?action=stream(&|$)")) {
        return (pipe);
    }
    # The long-poll with `after=`: cached and coalesced, whoever asks.
    # Without `after` it means "the frame after whatever is newest when this
    # request arrives", a different answer for every arrival: passed.
    if ((req.method == "GET" || req.method == "HEAD") &&
        req.url ~ "^/(cams/[^/?]+/)?next\.jpeg\?(.*&)?after=") {
        unset req.http.Cookie;
        unset req.http.Authorization;
        # ?after=5&width=320 and ?width=320&after=5 are one key.
        set req.url = std.querysort(req.url);
        return (hash);
    }
    # Uploads, /live.jpeg, /status, /metrics, pages, static files.
    return (pass);
}

sub vcl_pipe {
    # Keep the WebSocket handshake; the built-in VCL would send Connection: close.
    if (req.http.Upgrade) {
        set bereq.http.Upgrade = req.http.Upgrade;
        set bereq.http.Connection = req.http.Connection;
    }
}

sub vcl_hash {
    # One site: the URL is the whole key, whatever Host the viewer used.
    hash_data(req.url);
    return (lookup);
}

sub vcl_backend_response {
    if (bereq.uncacheable) {
        # A pass: deliver as livecam said.
        return (deliver);
    }
    # From here on: a long-poll key.
    if (beresp.status != 200) {
        # The 204 of a long-poll that timed out (Cache-Control: no-store), or
        # an error: an answer for the viewers who waited for this fetch, and
        # for nobody who asks later.
        #
        # Left to the built-in VCL, no-store would make the key hit-for-miss
        # for 120 s: after a camera stall every viewer asking `after=N` would
        # go to livecam on its own, uncoalesced, until a frame moved them on.
        # A plain zero TTL avoids that but, on Varnish 7.1, hands the 204 to
        # nobody on the waiting list: they stay held past their timeout while
        # one of them starts the next long-poll ("waiting list serialization").
        #
        # So: a TTL of 1 ms. Varnish judges freshness against the time a request
        # arrived, so every waiter (it arrived before this response) gets it,
        # and a request arriving afterwards (a viewer asking again) misses and
        # coalesces behind one new long-poll. `keep` holds the object in the
        # cache long enough for the whole waiting list to be woken; it is never
        # served after its TTL (no grace).
        set beresp.ttl = 1ms;
        set beresp.grace = 0s;
        set beresp.keep = 10s;
        unset beresp.http.Set-Cookie;
        return (deliver);
    }
    # A frame, shared for as long as livecam allows (s-maxage=2). No grace: a
    # stale frame is never needed, an expired key is answered at once by
    # livecam with its newest frame.
    set beresp.grace = 0s;
    set beresp.keep = 0s;
    if (beresp.http.Cache-Control !~ "(?i)s-maxage=[1-9]") {
        # livecam did not allow a shared copy (--no-edge-cache sends no-cache,
        # for which Varnish alone would keep the frame for its default TTL of
        # 120 s): the built-in rules below make the key hit-for-miss, and every
        # viewer goes to livecam, as asked.
        set beresp.ttl = 0s;
    }
    # On to the built-in rules (Set-Cookie, no-store, private: not shared).
}

sub vcl_deliver {
    # X-Frame-Age was the frame's age when livecam answered; add the time
    # the copy spent here, so the page's age display stays honest.
    if (obj.hits > 0 && resp.http.X-Frame-Age) {
        set resp.http.X-Frame-Age = std.integer(real = std.round(
            std.real(resp.http.X-Frame-Age, 0) + 1000 * std.real(duration = obj.age)));
    }
    if (obj.uncacheable) {
        set resp.http.X-Cache = "pass";
    } elsif (obj.hits > 0) {
        set resp.http.X-Cache = "hit";
    } else {
        set resp.http.X-Cache = "miss";
    }
}
