/*
 * gchat widget: buddy list and docked chat windows for Moodle pages.
 *
 * Installation is one tag, pasted into Moodle's "Additional HTML" footer:
 *     <script src="https://moodle.example.org/gchat/static/gchat.js"></script>
 * The server's base URL is derived from that src (".../gchat/static/gchat.js" -> ".../gchat").
 *
 * Plain ES5 on purpose (tests/test_static_es5.py enforces it): no let/const, arrows, classes,
 * template literals, Promises or frameworks, so it runs in whatever browser a school has.
 * Wire contract: docs/protocol.md (PROTOCOL.md). Every piece of user data is put into the page
 * with textContent / createTextNode / setAttribute, never with innerHTML.
 *
 * window.gchat exposes read-only information for tests and curious admins:
 *   transport  "websocket" | "longpoll" | null      state  see setState()
 *   cursor, user, lang, connected, reconnects, events (received), tokens (bootstraps that
 *   gave a token: 1 + renewals), snapshot() (conversations and message ids as shown)
 */
(function (window, document) {
    'use strict';

    if (window.gchat && window.gchat.loaded) {
        return; // the tag was pasted twice
    }

    // ------------------------------------------------------------------ constants

    var WS_FIRST_EVENT_TIMEOUT_MS = 5000;   // WebSocket must open and deliver within this
    var LONGPOLL_CLIENT_TIMEOUT_MS = 90000; // server answers idle polls after 45-55 s
    var LONGPOLL_HELD_MS = 1500;            // a poll held this long reached a live server
    var REPLY_TIMEOUT_MS = 15000;           // a command with no reply by then has failed
    var WS_PING_INTERVAL_MS = 25000;        // app-level ping detects silently dead sockets
    var BACKOFF_BASE_MS = 800;
    var BACKOFF_MAX_MS = 30000;
    var TYPING_SEND_EVERY_MS = 3000;
    var TYPING_SHOW_MS = 5000;
    var TITLE_FLASH_MS = 1200;
    var HISTORY_PAGE = 20;
    var TOKEN_RENEW_FRACTION = 0.8;
    var STORE_TRANSPORT = 'gchat.transport';
    var STORE_OUTBOX = 'gchat.outbox';
    var STORE_PANEL = 'gchat.panel';
    var DEFAULT_COLORS = {
        header: '#2F922C', header_unread: '#5ECC76', header_text: '#B0DDBA', border: '#888'
    };
    // Used only when the server's strings table lacks a key (it never should).
    var FALLBACK_STRINGS = {
        title: 'Global Chat', no_users: 'No online users.', reconnecting: 'Connection lost, retrying…',
        send: 'Send', close: 'Close', minimise: 'Minimise', maximise: 'Maximise',
        typing: '{name} is typing…', pending: 'Sending…', failed: 'Not sent.', retry: 'Retry',
        load_older: 'Load older messages'
    };

    // ------------------------------------------------------------------ small helpers

    function now() {
        return new Date().getTime();
    }

    function has(obj, key) {
        return Object.prototype.hasOwnProperty.call(obj, key);
    }

    function forEach(list, fn) {
        for (var i = 0; i < list.length; i++) {
            fn(list[i], i);
        }
    }

    function keys(obj) {
        var out = [];
        for (var k in obj) {
            if (has(obj, k)) {
                out.push(k);
            }
        }
        return out;
    }

    function storageGet(key) {
        try {
            return window.sessionStorage ? window.sessionStorage.getItem(key) : null;
        } catch (e) {
            return null; // storage disabled (privacy settings): behave as a fresh session
        }
    }

    function storageSet(key, value) {
        try {
            if (window.sessionStorage) {
                if (value === null) {
                    window.sessionStorage.removeItem(key);
                } else {
                    window.sessionStorage.setItem(key, value);
                }
            }
        } catch (e) {
            // full or disabled: nothing to remember, nothing lost but a shortcut
        }
    }

    function parseJSON(text) {
        try {
            return JSON.parse(text);
        } catch (e) {
            return null;
        }
    }

    function randomId(length) {
        var alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789';
        var out = '';
        var bytes = null;
        var cryptoObj = window.crypto || window.msCrypto;
        if (cryptoObj && cryptoObj.getRandomValues && window.Uint8Array) {
            bytes = new window.Uint8Array(length);
            cryptoObj.getRandomValues(bytes);
        }
        for (var i = 0; i < length; i++) {
            var r = bytes ? bytes[i] : Math.floor(Math.random() * 256);
            out += alphabet.charAt(r % alphabet.length);
        }
        return out;
    }

    function backoffDelay(attempt) {
        var ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * Math.pow(2, Math.min(attempt, 10)));
        return Math.round(ceiling * (0.5 + Math.random() * 0.5)); // "equal jitter"
    }

    function sameId(a, b) {
        return a !== null && a !== undefined && b !== null && b !== undefined && String(a) === String(b);
    }

    function addClass(node, name) {
        if ((' ' + node.className + ' ').indexOf(' ' + name + ' ') < 0) {
            node.className = node.className ? node.className + ' ' + name : name;
        }
    }

    function removeClass(node, name) {
        node.className = (' ' + node.className + ' ').replace(' ' + name + ' ', ' ')
            .replace(/^\s+|\s+$/g, '');
    }

    function toggleClass(node, name, on) {
        if (on) {
            addClass(node, name);
        } else {
            removeClass(node, name);
        }
    }

    function on(node, type, fn) {
        node.addEventListener(type, fn, false);
    }

    /* el('div', {className: 'x', 'aria-label': 'y'}, [child, 'text']) -- text children become text
       nodes, so user data can never turn into markup. */
    function el(tag, attrs, children) {
        var node = document.createElement(tag);
        if (attrs) {
            for (var name in attrs) {
                if (!has(attrs, name) || attrs[name] === null || attrs[name] === undefined) {
                    continue;
                }
                if (name === 'className') {
                    node.className = attrs[name];
                } else if (name === 'text') {
                    node.appendChild(document.createTextNode(String(attrs[name])));
                } else {
                    node.setAttribute(name, String(attrs[name]));
                }
            }
        }
        if (children) {
            forEach(children, function (child) {
                if (child === null || child === undefined) {
                    return;
                }
                node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
            });
        }
        return node;
    }

    function setText(node, text) {
        node.textContent = text === null || text === undefined ? '' : String(text);
    }

    function removeNode(node) {
        if (node && node.parentNode) {
            node.parentNode.removeChild(node);
        }
    }

    function safeImageUrl(url) {
        if (typeof url !== 'string' || !url) {
            return null;
        }
        return (/^(https?:\/\/|\/(?!\/))/i).test(url) ? url : null;
    }

    // ------------------------------------------------------------------ where we live

    function findOwnScript() {
        if (document.currentScript && document.currentScript.src) {
            return document.currentScript;
        }
        var scripts = document.getElementsByTagName('script');
        for (var i = scripts.length - 1; i >= 0; i--) {
            if (/\/static\/gchat(\.min)?\.js(\?|#|$)/.test(scripts[i].src || '')) {
                return scripts[i];
            }
        }
        return null;
    }

    var ownScript = findOwnScript();
    if (!ownScript) {
        return;
    }
    var scriptUrl = ownScript.src.replace(/[?#].*$/, '');
    var BASE = scriptUrl.replace(/\/static\/[^\/]+$/, '');
    var STATIC_BASE = scriptUrl.replace(/\/[^\/]+$/, '');

    function wsUrl(path) {
        var a = document.createElement('a');
        a.href = BASE + path;
        var secure = a.protocol === 'https:' || window.location.protocol === 'https:';
        return (secure ? 'wss://' : 'ws://') + a.host + a.pathname.replace(/^([^\/])/, '/$1') + a.search;
    }

    // ------------------------------------------------------------------ public info for tests

    var info = {
        loaded: true,
        version: '1',
        base: BASE,
        transport: null,
        state: 'starting',
        connected: false,
        cursor: null,
        user: null,
        lang: null,
        reconnects: 0,
        events: 0,
        tokens: 0,
        snapshot: function () {
            var out = [];
            forEach(conversationOrder, function (id) {
                var conv = convs[id];
                if (!conv) {
                    return;
                }
                var ids = [];
                forEach(conv.items, function (item) {
                    ids.push(item.message.id === undefined ? null : item.message.id);
                });
                out.push({
                    id: conv.id, 'with': conv.peer, open: conv.open, minimized: conv.minimized,
                    unread: unreadOf(conv), messages: ids
                });
            });
            return {online: keys(online).length, conversations: out};
        }
    };
    window.gchat = info;

    function setState(state) {
        // starting | hidden (not logged in) | connecting | connected | reconnecting | ended
        info.state = state;
        info.connected = state === 'connected';
        if (ui.root) {
            ui.root.setAttribute('data-state', state);
            renderStatus();
        }
    }

    // ------------------------------------------------------------------ state

    var token = null;
    var me = null;
    var strings = {};
    var settings = {colors: DEFAULT_COLORS, history_size: 10, max_message_length: 1333};
    var online = {};            // user id -> user
    var convs = {};             // conversation id -> conversation (see makeConversation)
    var conversationOrder = []; // ids in dock order, first = rightmost
    var lastCursor = null;
    var tabId = randomId(16);
    var renewTimer = null;
    var ended = false;
    var unloading = false;      // the page is going away: a dropped connection is no news
    var seenReady = false;      // a ready snapshot arrived on this page
    var pageTitle = document.title;

    function t(key, params) {
        var text = has(strings, key) ? strings[key] : (has(FALLBACK_STRINGS, key) ? FALLBACK_STRINGS[key] : key);
        if (params) {
            text = String(text).replace(/\{(\w+)\}/g, function (whole, name) {
                return has(params, name) ? String(params[name]) : whole;
            });
        }
        return text;
    }

    function color(name) {
        var colors = settings.colors || {};
        var value = colors[name];
        // Only plain colour values reach a style attribute.
        if (typeof value === 'string' && (/^(#[0-9a-f]{3,8}|[a-z]+|rgba?\([0-9.,%\s]+\))$/i).test(value)) {
            return value;
        }
        return DEFAULT_COLORS[name];
    }

    // ------------------------------------------------------------------ HTTP

    function request(method, path, opts, callback) {
        var xhr = new XMLHttpRequest();
        var done = false;
        function finish(status, body) {
            if (done) {
                return;
            }
            done = true;
            callback(status, body);
        }
        xhr.open(method, BASE + path, true);
        xhr.withCredentials = true;
        if (opts.timeout) {
            xhr.timeout = opts.timeout;
        }
        if (opts.token) {
            xhr.setRequestHeader('X-Gchat-Token', opts.token);
        }
        if (opts.body !== undefined) {
            xhr.setRequestHeader('Content-Type', 'application/json');
        }
        xhr.onreadystatechange = function () {
            if (xhr.readyState === 4) {
                // status 0: network error, abort or timeout
                finish(xhr.status, xhr.status ? parseJSON(xhr.responseText) : null);
            }
        };
        xhr.ontimeout = function () {
            finish(0, null);
        };
        xhr.send(opts.body === undefined ? null : JSON.stringify(opts.body));
        return xhr;
    }

    function errorCode(body) {
        return body && body.error && body.error.code ? body.error.code : null;
    }

    // ------------------------------------------------------------------ bootstrap and token

    var bootstrapAttempt = 0;

    function bootstrap(callback) {
        // callback(result): 'ok' | 'logged_out' | 'unreachable'
        request('GET', '/api/bootstrap', {timeout: 20000}, function (status, body) {
            if (status === 200 && body && body.token) {
                bootstrapAttempt = 0;
                applyBootstrap(body);
                callback('ok');
            } else if (status === 401 || status === 403) {
                callback('logged_out');
            } else {
                callback('unreachable');
            }
        });
    }

    function applyBootstrap(body) {
        token = body.token;
        info.tokens++;
        if (body.user) {
            me = body.user;
            info.user = me;
        }
        if (body.strings) {
            strings = body.strings;
        }
        if (body.settings) {
            settings = body.settings;
            if (!settings.colors) {
                settings.colors = DEFAULT_COLORS;
            }
        }
        info.lang = body.lang || null;
        scheduleTokenRenewal();
    }

    function scheduleTokenRenewal() {
        if (renewTimer) {
            window.clearTimeout(renewTimer);
        }
        var ttl = Number(settings.token_ttl) || 3600;
        renewTimer = window.setTimeout(function () {
            renewTimer = null;
            renewToken();
        }, Math.max(1, ttl * TOKEN_RENEW_FRACTION) * 1000);
    }

    var renewing = false;
    var renewWaiters = [];

    /* Fetch a fresh token. A live WebSocket keeps running (its token was checked at connect);
       the new token is used for the next connection and for every long-poll request. */
    function renewToken(callback) {
        if (callback) {
            renewWaiters.push(callback);
        }
        if (renewing || ended) {
            return;
        }
        renewing = true;
        bootstrap(function (result) {
            renewing = false;
            var waiters = renewWaiters;
            renewWaiters = [];
            if (result === 'logged_out') {
                endSession();
            } else if (result === 'unreachable' && !renewTimer) {
                renewTimer = window.setTimeout(function () {
                    renewTimer = null;
                    renewToken();
                }, backoffDelay(2));
            }
            forEach(waiters, function (fn) {
                fn(result);
            });
        });
    }

    function start() {
        bootstrap(function (result) {
            if (result === 'ok') {
                buildUi();
                connect();
            } else if (result === 'logged_out') {
                setState('hidden'); // not logged in, or a guest: stay invisible
            } else {
                // Server unreachable: stay invisible and try again later.
                window.setTimeout(start, backoffDelay(bootstrapAttempt++ + 2));
            }
        });
    }

    function endSession() {
        if (ended) {
            return;
        }
        ended = true;
        disconnect();
        if (renewTimer) {
            window.clearTimeout(renewTimer);
        }
        stopTitleFlash();
        removeNode(ui.root);
        removeNode(ui.blockRoot);
        storageSet(STORE_OUTBOX, null);
        setState('ended');
    }

    // ------------------------------------------------------------------ connection management

    var conn = null;          // the current transport object
    var connGeneration = 0;   // callbacks of an older connection are ignored
    var reconnectTimer = null;
    var reconnectAttempt = 0;
    var wsProven = false;     // a WebSocket delivered events on this page
    var wsFailStreak = 0;

    function preferredTransport() {
        if (!window.WebSocket) {
            return 'longpoll';
        }
        if (storageGet(STORE_TRANSPORT) === 'longpoll' && !wsProven) {
            return 'longpoll';
        }
        return 'websocket';
    }

    function connect() {
        if (ended) {
            return;
        }
        if (reconnectTimer) {
            window.clearTimeout(reconnectTimer);
            reconnectTimer = null;
        }
        disconnect();
        setState(info.reconnects || reconnectAttempt ? 'reconnecting' : 'connecting');
        if (preferredTransport() === 'websocket') {
            openWebSocket();
        } else {
            openLongPoll();
        }
    }

    function disconnect() {
        connGeneration++;
        if (conn) {
            var old = conn;
            conn = null;
            old.close();
        }
        failInflightReplies();
    }

    function scheduleReconnect() {
        if (ended || reconnectTimer) {
            return;
        }
        setState('reconnecting');
        var delay = backoffDelay(reconnectAttempt++);
        reconnectTimer = window.setTimeout(function () {
            reconnectTimer = null;
            info.reconnects++;
            connect();
        }, delay);
    }

    // Called by a transport once it delivered its first event.
    function transportUp(kind) {
        reconnectAttempt = 0;
        authRetries = 0;
        info.transport = kind;
        storageSet(STORE_TRANSPORT, kind);
        setState('connected');
        flushOutbox();
    }

    var authRetries = 0;

    /* A transport failed. reason: 'session_ended' | 'auth' (token refused) | 'server' (the
       server said "try again later") | anything else (closed, timeout, network).
       beforeFirstEvent: it never delivered anything (blocked upgrade, server down). Then ask
       bootstrap whether the server is there (this also renews the token): if it is, the
       WebSocket path itself is what fails, so fall back to long-polling. */
    function transportDown(kind, beforeFirstEvent, reason) {
        if (ended || unloading) {
            return;
        }
        connGeneration++;
        conn = null;
        failInflightReplies();
        if (reason === 'session_ended') {
            endSession();
            return;
        }
        if (reason === 'auth') {
            setState('reconnecting');
            var authGeneration = connGeneration;
            renewToken(function (result) {
                if (authGeneration !== connGeneration || ended || reconnectTimer) {
                    return;
                }
                if (result === 'ok' && authRetries++ < 3) {
                    info.reconnects++;
                    connect();
                } else {
                    scheduleReconnect();
                }
            });
            return;
        }
        if (!beforeFirstEvent || reason === 'server') {
            if (kind === 'websocket') {
                wsFailStreak = 0;
            }
            scheduleReconnect();
            return;
        }
        setState('reconnecting');
        var generation = connGeneration;
        renewToken(function (result) {
            if (generation !== connGeneration || ended || reconnectTimer) {
                return;
            }
            if (result !== 'ok') {
                scheduleReconnect(); // server away: same transport later
                return;
            }
            if (kind === 'websocket') {
                wsFailStreak++;
                if (!wsProven || wsFailStreak >= 2) {
                    wsProven = false;
                    storageSet(STORE_TRANSPORT, 'longpoll');
                    info.reconnects++;
                    connect();
                    return;
                }
                info.reconnects++;
                connect();
                return;
            }
            scheduleReconnect();
        });
    }

    // ------------------------------------------------------------------ WebSocket transport

    function openWebSocket() {
        var generation = connGeneration;
        var url = wsUrl('/ws?token=' + encodeURIComponent(token) +
            (lastCursor ? '&cursor=' + encodeURIComponent(lastCursor) : ''));
        var socket;
        try {
            socket = new window.WebSocket(url);
        } catch (e) {
            transportDown('websocket', true, 'error');
            return;
        }
        var gotEvent = false;
        var closed = false;
        var closeReason = 'closed';
        var pingTimer = null;
        var firstEventTimer = window.setTimeout(function () {
            if (!gotEvent) {
                stop();
                transportDown('websocket', true, 'timeout');
            }
        }, WS_FIRST_EVENT_TIMEOUT_MS);

        function stop() {
            closed = true;
            window.clearTimeout(firstEventTimer);
            window.clearInterval(pingTimer);
            socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
            try {
                socket.close();
            } catch (e) {
                // already closing
            }
        }

        conn = {
            kind: 'websocket',
            send: function (command) {
                if (closed || socket.readyState !== 1) {
                    return false;
                }
                socket.send(JSON.stringify(command));
                return true;
            },
            close: stop
        };

        socket.onmessage = function (event) {
            if (generation !== connGeneration) {
                return;
            }
            var data = parseJSON(event.data);
            if (!data || typeof data !== 'object') {
                return;
            }
            if (data.type === 'reply') {
                handleReply(data);
                return;
            }
            if (data.type === 'error' && !data.cursor) {
                // Why the server is about to close this socket.
                var code = data.code;
                closeReason = code === 'session_ended' || code === 'not_logged_in' ? 'session_ended' :
                    (code === 'bad_token' || code === 'token_expired' ? 'auth' :
                        (code === 'unavailable' || code === 'too_many_connections' ||
                            code === 'shutting_down' ? 'server' : 'closed'));
                return;
            }
            if (!gotEvent) {
                gotEvent = true;
                wsProven = true;
                wsFailStreak = 0;
                window.clearTimeout(firstEventTimer);
                pingTimer = window.setInterval(function () {
                    command({type: 'ping'}, function (reply) {
                        if (reply.error && reply.error.code === 'timeout' && generation === connGeneration) {
                            stop(); // no answer: the socket is dead although the browser thinks not
                            transportDown('websocket', false, 'ping');
                        }
                    });
                }, WS_PING_INTERVAL_MS);
                handleEvent(data);
                if (generation === connGeneration) {
                    transportUp('websocket');
                }
                return;
            }
            handleEvent(data);
        };

        socket.onclose = function (event) {
            if (generation !== connGeneration) {
                return;
            }
            var wasFirst = !gotEvent;
            var code = event ? event.code : 0;
            stop();
            transportDown('websocket', wasFirst, code === 4000 ? 'session_ended' :
                (code === 1013 || code === 1001 ? 'server' : closeReason));
        };
    }

    // ------------------------------------------------------------------ long-poll transport

    function openLongPoll() {
        var generation = connGeneration;
        var current = null;
        var gotAnswer = false;
        var up = false;
        var heldTimer = null;
        var stopped = false;

        // Connected once the server answered, or holds a poll open: resuming from a cursor
        // with nothing new, the answer only comes with the next event or after 45-55 s.
        function reportUp() {
            window.clearTimeout(heldTimer);
            if (!up && !stopped && generation === connGeneration) {
                up = true;
                transportUp('longpoll');
            }
        }

        function stop() {
            stopped = true;
            window.clearTimeout(heldTimer);
            if (current) {
                current.onreadystatechange = null;
                try {
                    current.abort();
                } catch (e) {
                    // nothing to abort
                }
            }
        }

        conn = {
            kind: 'longpoll',
            send: function (cmd) {
                if (stopped) {
                    return false;
                }
                request('POST', '/api/send', {token: token, body: cmd, timeout: REPLY_TIMEOUT_MS},
                    function (status, body) {
                        if (status === 0 || !body || typeof body !== 'object') {
                            handleReply({type: 'reply', ref: cmd.ref, ok: false,
                                error: {code: 'network', message: 'network error'}});
                            return;
                        }
                        var reply = body;
                        if (reply.ok === undefined) {
                            reply = {type: 'reply', ref: cmd.ref, ok: status < 400 && !body.error,
                                error: body.error};
                            for (var k in body) {
                                if (has(body, k) && !has(reply, k)) {
                                    reply[k] = body[k];
                                }
                            }
                        }
                        if (reply.ref === undefined) {
                            reply.ref = cmd.ref;
                        }
                        handleReply(reply);
                    });
                return true;
            },
            close: stop
        };

        function poll() {
            if (stopped || generation !== connGeneration) {
                return;
            }
            var path = '/api/poll?tab=' + encodeURIComponent(tabId) +
                (lastCursor ? '&cursor=' + encodeURIComponent(lastCursor) : '');
            if (!up) {
                heldTimer = window.setTimeout(reportUp, LONGPOLL_HELD_MS);
            }
            current = request('GET', path, {token: token, timeout: LONGPOLL_CLIENT_TIMEOUT_MS},
                function (status, body) {
                    current = null;
                    window.clearTimeout(heldTimer);
                    if (stopped || generation !== connGeneration) {
                        return;
                    }
                    if (status === 200 && body && body.events) {
                        gotAnswer = true;
                        forEach(body.events, function (event) {
                            if (generation === connGeneration) {
                                handleEvent(event);
                            }
                        });
                        if (generation !== connGeneration) {
                            return; // an event ended the session or reset the connection
                        }
                        if (body.cursor) {
                            lastCursor = body.cursor;
                            info.cursor = lastCursor;
                        }
                        reportUp();
                        poll();
                        return;
                    }
                    var code = errorCode(body);
                    if (code === 'session_ended' || code === 'not_logged_in') {
                        stop();
                        transportDown('longpoll', false, 'session_ended');
                    } else if (code === 'bad_token' || code === 'token_expired') {
                        stop();
                        transportDown('longpoll', !gotAnswer, 'auth');
                    } else if (status === 503 || status === 429) {
                        stop();
                        transportDown('longpoll', !gotAnswer, 'server');
                    } else {
                        var wasFirst = !gotAnswer;
                        stop();
                        transportDown('longpoll', wasFirst, 'http ' + status);
                    }
                });
        }
        poll();
    }

    // ------------------------------------------------------------------ commands and replies

    var nextRef = 1;
    var inflight = {};  // ref -> {callback, timer}
    var outbox = [];    // commands waiting for a connection: {cmd, callback}

    /* Send a command; callback(reply) gets exactly one reply, real or synthesised
       ({ok: false, error: {code: 'timeout'|'disconnected'|'network'}}). */
    function command(cmd, callback) {
        cmd.ref = tabId + '-' + (nextRef++);
        if (conn && info.connected && conn.send(cmd)) {
            track(cmd, callback);
        } else {
            outbox.push({cmd: cmd, callback: callback});
        }
    }

    function track(cmd, callback) {
        var entry = {callback: callback, timer: null};
        entry.timer = window.setTimeout(function () {
            delete inflight[cmd.ref];
            if (callback) {
                callback({type: 'reply', ref: cmd.ref, ok: false, error: {code: 'timeout', message: 'no reply'}});
            }
        }, REPLY_TIMEOUT_MS);
        inflight[cmd.ref] = entry;
    }

    function handleReply(reply) {
        var entry = inflight[reply.ref];
        if (!entry) {
            return;
        }
        delete inflight[reply.ref];
        window.clearTimeout(entry.timer);
        var code = reply.ok ? null : errorCode(reply);
        if (code === 'bad_token' || code === 'token_expired') {
            renewToken(function (result) {
                if (result === 'ok' && conn && conn.kind === 'websocket') {
                    connect(); // the socket's token is no good any more: reconnect with the new one
                }
            });
        } else if (code === 'session_ended') {
            endSession();
        }
        if (entry.callback) {
            entry.callback(reply);
        }
    }

    function failInflightReplies() {
        var pending = inflight;
        inflight = {};
        for (var ref in pending) {
            if (has(pending, ref)) {
                window.clearTimeout(pending[ref].timer);
                if (pending[ref].callback) {
                    pending[ref].callback({type: 'reply', ref: ref, ok: false,
                        error: {code: 'disconnected', message: 'connection lost'}});
                }
            }
        }
    }

    function flushOutbox() {
        var waiting = outbox;
        outbox = [];
        forEach(waiting, function (item) {
            if (conn && info.connected && conn.send(item.cmd)) {
                track(item.cmd, item.callback);
            } else {
                outbox.push(item);
            }
        });
        retryPendingMessages();
    }

    // ------------------------------------------------------------------ events

    function parseCursor(cursor) {
        if (typeof cursor !== 'string') {
            return null;
        }
        var i = cursor.lastIndexOf(':');
        if (i < 0) {
            return null;
        }
        var seq = parseInt(cursor.slice(i + 1), 10);
        return isNaN(seq) ? null : {epoch: cursor.slice(0, i), seq: seq};
    }

    // Events carry strictly increasing cursors: anything not after the last one is a repeat.
    function isRepeat(cursor) {
        var next = parseCursor(cursor);
        var last = parseCursor(lastCursor);
        return !!(next && last && next.epoch === last.epoch && next.seq <= last.seq);
    }

    function handleEvent(event) {
        if (ended || !event || typeof event.type !== 'string') {
            return;
        }
        if (event.cursor) {
            if (event.type !== 'ready' && isRepeat(event.cursor)) {
                return;
            }
            lastCursor = event.cursor;
            info.cursor = lastCursor;
        }
        info.events++;
        switch (event.type) {
        case 'ready':
            onReady(event);
            break;
        case 'presence':
            onPresence(event);
            break;
        case 'conversation':
            if (event.conversation) {
                applyConversation(event.conversation, false, true);
            }
            break;
        case 'message':
            if (event.message) {
                addMessage(event.message, 'event');
            }
            break;
        case 'typing':
            onTyping(event);
            break;
        case 'error':
            if (event.code === 'session_ended' || event.code === 'not_logged_in') {
                endSession();
            }
            break;
        default:
            break; // a newer server's event: ignore it
        }
    }

    function onReady(event) {
        if (event.me) {
            me = event.me;
            info.user = me;
        }
        online = {};
        forEach(event.online || [], function (user) {
            if (user && !sameId(user.id, me && me.id)) {
                online[user.id] = user;
            }
        });
        var reset = !!event.reset || !seenReady;
        seenReady = true;
        var present = {};
        forEach(event.conversations || [], function (conversation) {
            present[conversation.id] = true;
            applyConversation(conversation, reset);
        });
        forEach(conversationOrder.slice(), function (id) {
            if (!present[id]) {
                removeConversation(id);
            }
        });
        renderBuddies();
        forEach(conversationOrder, function (id) {
            renderHeader(convs[id]);
        });
        restoreOutbox();
    }

    function onPresence(event) {
        var user = event.user;
        if (!user || sameId(user.id, me && me.id)) {
            return;
        }
        if (event.status === 'offline') {
            delete online[user.id];
        } else {
            online[user.id] = user;
        }
        renderBuddies();
        forEach(conversationOrder, function (id) {
            var conv = convs[id];
            if (conv && sameId(conv.peer.id, user.id)) {
                renderHeader(conv);
            }
        });
    }

    function onTyping(event) {
        var conv = convs[event.conversation];
        if (!conv) {
            return;
        }
        var user = event.user;
        var userId = user && typeof user === 'object' ? user.id : user;
        if (sameId(userId, me && me.id)) {
            return;
        }
        conv.typingUntil = now() + TYPING_SHOW_MS;
        renderTyping(conv);
        window.clearTimeout(conv.typingTimer);
        conv.typingTimer = window.setTimeout(function () {
            renderTyping(conv);
        }, TYPING_SHOW_MS + 50);
    }

    // ------------------------------------------------------------------ conversations

    function makeConversation(data) {
        return {
            id: data.id,
            peer: data['with'] || {},
            open: false,
            minimized: false,
            unread: 0,          // the server's count at the last conversation event
            unreadBase: 0,      // highest message id known at that event
            items: [],          // [{key, message, el}] sorted: by id, then pending ones
            byKey: {},
            hasOlder: true,
            loadingOlder: false,
            typingUntil: 0,
            typingTimer: null,
            lastTypingSent: 0,
            lastSeenSent: 0,
            dom: null
        };
    }

    // The stored message with the highest id (pending local copies have none), or null.
    function newestMessage(conv) {
        for (var i = conv.items.length - 1; i >= 0; i--) {
            var m = conv.items[i].message;
            if (m.id !== undefined && m.id !== null) {
                return m;
            }
        }
        return null;
    }

    function maxMessageId(conv) {
        var m = newestMessage(conv);
        return m ? Number(m.id) : 0;
    }

    /* Unread = the server's count at the last conversation event, plus the peer's messages that
       arrived after it. A conversation event counts every message stored before it, so this
       never counts one message twice when the event and the message arrive in either order. */
    function unreadOf(conv) {
        var count = Number(conv.unread) || 0;
        forEach(conv.items, function (item) {
            var m = item.message;
            if (m.id !== undefined && Number(m.id) > conv.unreadBase && !sameId(m.from, me && me.id)) {
                count++;
            }
        });
        return count;
    }

    /* Apply a conversation's state. live: it comes from a conversation event (not a snapshot or
       a reply), so a peer's message it brings along is news to announce. */
    function applyConversation(data, replaceMessages, live) {
        if (!data || data.id === undefined) {
            return null;
        }
        var conv = convs[data.id];
        if (!data.open) {
            if (conv) {
                removeConversation(data.id);
            }
            return null;
        }
        var isNew = !conv;
        if (isNew) {
            conv = makeConversation(data);
            convs[data.id] = conv;
            conversationOrder.push(data.id);
        }
        if (data['with']) {
            conv.peer = data['with'];
        }
        conv.open = true;
        conv.minimized = !!data.minimized;
        if (!conv.dom) {
            buildWindow(conv);
        }
        if (replaceMessages && !isNew) {
            clearMessages(conv);
        }
        var knownBefore = maxMessageId(conv);
        if (data.messages) {
            forEach(data.messages, function (m) {
                addMessage(m, 'snapshot');
            });
            if (data.messages.length < (Number(settings.history_size) || 10)) {
                conv.hasOlder = false;
            }
        }
        conv.unread = Number(data.unread) || 0;
        // The event counted everything stored before it; messages the client has not seen yet
        // but whose ids are below the event's are part of that count, so the base is the
        // highest id this client knows *now* (including the event's own messages).
        conv.unreadBase = maxMessageId(conv);
        var newest = newestMessage(conv);
        if (live && conv.unread > 0 && newest && Number(newest.id) > knownBefore &&
                !sameId(newest.from, me && me.id)) {
            // The peer's message that opened this window (its message event will be a repeat).
            announce(conv, newest);
            noteIncoming(conv);
        }
        renderWindowState(conv);
        renderHeader(conv);
        renderOlderControl(conv);
        updateTitleFlash();
        maybeSeen(conv);
        return conv;
    }

    function removeConversation(id) {
        var conv = convs[id];
        if (!conv) {
            return;
        }
        window.clearTimeout(conv.typingTimer);
        if (conv.dom) {
            var hadFocus = conv.dom.root.contains(document.activeElement);
            removeNode(conv.dom.root);
            if (hadFocus && ui.panelToggle) {
                ui.panelToggle.focus();
            }
        }
        delete convs[id];
        for (var i = 0; i < conversationOrder.length; i++) {
            if (sameId(conversationOrder[i], id)) {
                conversationOrder.splice(i, 1);
                break;
            }
        }
        updateTitleFlash();
    }

    function findConversationWith(userId) {
        for (var i = 0; i < conversationOrder.length; i++) {
            var conv = convs[conversationOrder[i]];
            if (conv && sameId(conv.peer.id, userId)) {
                return conv;
            }
        }
        return null;
    }

    // ------------------------------------------------------------------ messages

    /* Add a message (server copy) or a pending local copy (source 'local').
       Messages are shown sorted by id; pending ones follow at the end in sending order.
       A server copy with a known client_id replaces the pending one. Returns the item. */
    function addMessage(m, source) {
        var conv = convs[m.conversation];
        if (!conv) {
            return null; // the protocol sends a conversation event first; nothing to show otherwise
        }
        var key = source === 'local' ? 'c:' + m.client_id : 'm:' + m.id;
        if (source !== 'local' && m.client_id && conv.byKey['c:' + m.client_id]) {
            // the stored copy of a message shown as pending: it takes the pending one's place
            var pendingItem = conv.byKey['c:' + m.client_id];
            delete conv.byKey['c:' + m.client_id];
            removeItem(conv, pendingItem);
            dropFromOutbox(m.client_id);
        }
        if (conv.byKey[key]) {
            return conv.byKey[key];
        }
        var item = {key: key, message: m, el: null, state: source === 'local' ? 'pending' : 'sent'};
        var index = conv.items.length;
        if (source !== 'local') {
            // after the last message with a smaller id; before every pending one
            index = 0;
            for (var i = conv.items.length - 1; i >= 0; i--) {
                var other = conv.items[i].message;
                if (other.id !== undefined && other.id !== null && Number(other.id) < Number(m.id)) {
                    index = i + 1;
                    break;
                }
            }
        }
        var log = conv.dom.log;
        var stick = source === 'local' || nearBottom(log);
        var oldHeight = log.scrollHeight;
        var oldTop = log.scrollTop;
        conv.items.splice(index, 0, item);
        conv.byKey[key] = item;
        item.el = renderMessage(conv, item);
        var next = conv.items[index + 1];
        log.insertBefore(item.el, next ? next.el : null);
        if (index === 0 && conv.items.length > 1 && source === 'history') {
            log.scrollTop = oldTop + (log.scrollHeight - oldHeight); // keep the reader's place
        } else if (stick) {
            log.scrollTop = log.scrollHeight;
        }
        var fromPeer = source !== 'local' && !sameId(m.from, me && me.id);
        if (fromPeer && source === 'event') {
            conv.typingUntil = 0;
            renderTyping(conv);
            announce(conv, m);
            noteIncoming(conv);
        }
        renderHeader(conv);
        maybeSeen(conv);
        return item;
    }

    function removeItem(conv, item) {
        for (var i = 0; i < conv.items.length; i++) {
            if (conv.items[i] === item) {
                conv.items.splice(i, 1);
                break;
            }
        }
        removeNode(item.el);
    }

    function clearMessages(conv) {
        var keep = [];
        forEach(conv.items, function (item) {
            if (item.state === 'sent') {
                removeNode(item.el);
                delete conv.byKey[item.key];
            } else {
                keep.push(item);
            }
        });
        conv.items = keep;
        conv.hasOlder = true;
    }

    function nearBottom(node) {
        return node.scrollHeight - node.scrollTop - node.clientHeight < 40;
    }

    // ------------------------------------------------------------------ sending

    var pendingSends = {}; // client_id -> {conversation, text, client_id, time, inflight, attempts}

    function saveOutbox() {
        var list = [];
        for (var id in pendingSends) {
            if (has(pendingSends, id) && !pendingSends[id].permanent) {
                var p = pendingSends[id];
                list.push({conversation: p.conversation, text: p.text, client_id: p.client_id, time: p.time});
            }
        }
        storageSet(STORE_OUTBOX, list.length ? JSON.stringify(list) : null);
    }

    function dropFromOutbox(clientId) {
        if (has(pendingSends, clientId)) {
            window.clearTimeout(pendingSends[clientId].retryTimer);
            delete pendingSends[clientId];
            saveOutbox();
        }
    }

    // Messages left unsent by the previous page of this browser session are sent again
    // (same client_id: the server stores each at most once).
    function restoreOutbox() {
        var saved = parseJSON(storageGet(STORE_OUTBOX) || 'null');
        if (!saved || !saved.length) {
            return;
        }
        forEach(saved, function (p) {
            var conv = p && convs[p.conversation];
            if (!conv || !p.client_id || !p.text || has(pendingSends, p.client_id)) {
                return;
            }
            for (var i = 0; i < conv.items.length; i++) {
                if (conv.items[i].message.client_id === p.client_id) {
                    return; // stored after all (the answer was lost with the old page)
                }
            }
            queueMessage(conv, p.text, p.client_id, p.time);
        });
        saveOutbox();
    }

    function sendText(conv, text) {
        if (!/\S/.test(text)) {
            return false;
        }
        var max = Number(settings.max_message_length) || 1333;
        if (text.length > max) {
            showWindowError(conv, t('error_too_long', {max: max}));
            return false;
        }
        queueMessage(conv, text, randomId(24), now());
        return true;
    }

    function queueMessage(conv, text, clientId, time) {
        var p = {conversation: conv.id, text: text, client_id: clientId, time: time,
            inflight: false, attempts: 0, retryTimer: null, permanent: false};
        pendingSends[clientId] = p;
        saveOutbox();
        addMessage({conversation: conv.id, from: me && me.id, text: text, time: time, client_id: clientId},
            'local');
        transmit(p);
    }

    function transmit(p) {
        if (!has(pendingSends, p.client_id) || p.inflight) {
            return;
        }
        window.clearTimeout(p.retryTimer);
        p.inflight = true;
        p.attempts++;
        setPendingState(p, 'pending');
        command({type: 'send', conversation: p.conversation, text: p.text, client_id: p.client_id},
            function (reply) {
                p.inflight = false;
                if (!has(pendingSends, p.client_id)) {
                    return; // the message event already confirmed it
                }
                if (reply.ok && reply.message) {
                    dropFromOutbox(p.client_id);
                    addMessage(reply.message, 'reply');
                    return;
                }
                var code = errorCode(reply) || 'generic';
                var permanent = code === 'too_long' || code === 'empty' || code === 'not_allowed' ||
                    code === 'not_found' || code === 'bad_command' || code === 'bad_json';
                setPendingState(p, 'failed', permanent ? code : null);
                if (permanent) {
                    p.permanent = true; // stays on screen with Retry, but is not carried to the next page
                    saveOutbox();
                    return;
                }
                // Transient (unavailable, timeout, connection lost, rate limited): retry by itself
                // with the same client_id, so it is stored once whatever happened to the first try.
                p.retryTimer = window.setTimeout(function () {
                    if (conn && info.connected) {
                        transmit(p);
                    }
                }, backoffDelay(p.attempts));
            });
    }

    function retryPendingMessages() {
        for (var id in pendingSends) {
            if (has(pendingSends, id) && !pendingSends[id].inflight && !pendingSends[id].permanent) {
                transmit(pendingSends[id]);
            }
        }
    }

    function setPendingState(p, state, errorCodeValue) {
        var conv = convs[p.conversation];
        var item = conv && conv.byKey['c:' + p.client_id];
        if (!item) {
            return;
        }
        item.state = state;
        item.error = errorCodeValue || null;
        renderMessageState(conv, item);
    }

    function retryMessage(conv, item) {
        var p = pendingSends[item.message.client_id];
        if (!p) {
            return;
        }
        p.permanent = false;
        saveOutbox();
        transmit(p);
    }

    // ------------------------------------------------------------------ user actions

    function openWith(user) {
        var conv = findConversationWith(user.id);
        if (conv) {
            if (conv.minimized) {
                setMinimized(conv, false);
            }
            focusInput(conv);
            return;
        }
        command({type: 'open', user: user.id}, function (reply) {
            if (reply.ok && reply.conversation) {
                var opened = applyConversation(reply.conversation, false);
                if (opened) {
                    if (opened.minimized) {
                        setMinimized(opened, false);
                    }
                    focusInput(opened);
                }
            } else {
                flashPanelError(reply);
            }
        });
    }

    function setMinimized(conv, minimized) {
        conv.minimized = minimized;
        renderWindowState(conv);
        command({type: 'minimize', conversation: conv.id, minimized: minimized});
        if (!minimized) {
            maybeSeen(conv);
        }
    }

    function closeConversation(conv) {
        command({type: 'close', conversation: conv.id});
        removeConversation(conv.id);
    }

    /* Tell the server the peer's messages were read: only when the window is open, the page is
       visible and has focus, and the user is in this chat window. */
    function maybeSeen(conv) {
        if (!conv || !conv.dom || conv.minimized || document.hidden || !document.hasFocus()) {
            return;
        }
        if (!conv.dom.root.contains(document.activeElement)) {
            return;
        }
        var last = maxMessageId(conv);
        if (!last || unreadOf(conv) === 0) {
            return;
        }
        conv.lastSeenSent = last;
        conv.unread = 0;
        conv.unreadBase = last;
        renderHeader(conv);
        updateTitleFlash();
        command({type: 'seen', conversation: conv.id, message: last});
    }

    function loadOlder(conv) {
        if (conv.loadingOlder || !conv.hasOlder) {
            return;
        }
        var oldest = null;
        for (var i = 0; i < conv.items.length; i++) {
            if (conv.items[i].message.id !== undefined && conv.items[i].message.id !== null) {
                oldest = conv.items[i].message.id;
                break;
            }
        }
        if (oldest === null) {
            conv.hasOlder = false;
            renderOlderControl(conv);
            return;
        }
        conv.loadingOlder = true;
        renderOlderControl(conv);
        command({type: 'history', conversation: conv.id, before: oldest, limit: HISTORY_PAGE},
            function (reply) {
                conv.loadingOlder = false;
                if (reply.ok && reply.messages) {
                    for (var j = reply.messages.length - 1; j >= 0; j--) {
                        addMessage(reply.messages[j], 'history');
                    }
                    if (reply.messages.length < HISTORY_PAGE) {
                        conv.hasOlder = false;
                    }
                }
                renderOlderControl(conv);
            });
    }

    function noteTyping(conv) {
        if (now() - conv.lastTypingSent < TYPING_SEND_EVERY_MS) {
            return;
        }
        conv.lastTypingSent = now();
        if (conn && info.connected) {
            command({type: 'typing', conversation: conv.id});
        }
    }

    // ------------------------------------------------------------------ UI: root, panel, live region

    var ui = {root: null, dock: null, panel: null, panelToggle: null, blockRoot: null, list: null,
        empty: null, status: null, live: null, count: null};

    function loadCss() {
        var link = document.createElement('link');
        link.rel = 'stylesheet';
        link.href = STATIC_BASE + '/gchat.css';
        var shown = false;
        function show() {
            if (!shown && ui.root) {
                shown = true;
                removeClass(ui.root, 'gchat-loading');
            }
        }
        on(link, 'load', show);
        on(link, 'error', show);
        window.setTimeout(show, 3000);
        if (ownScript.parentNode) {
            ownScript.parentNode.insertBefore(link, ownScript.nextSibling);
        } else {
            document.getElementsByTagName('head')[0].appendChild(link);
        }
    }

    function containerElement() {
        var selector = settings.container || 'body';
        var node = null;
        try {
            node = document.querySelector(selector);
        } catch (e) {
            node = null;
        }
        return node || document.body;
    }

    function buildUi() {
        loadCss();
        ui.root = el('div', {id: 'gchat-root', className: 'gchat gchat-loading', 'data-state': info.state,
            lang: (info.lang || 'en').replace('_', '-')});
        ui.live = el('div', {className: 'gchat-sr-only', role: 'status', 'aria-live': 'polite',
            'aria-atomic': 'true'});
        ui.dock = el('div', {className: 'gchat-dock'});
        ui.root.appendChild(ui.live);
        ui.root.appendChild(ui.dock);

        var block = document.getElementById('gchat-block');
        ui.list = el('ul', {className: 'gchat-buddy-list', 'aria-label': t('title')});
        ui.empty = el('p', {className: 'gchat-empty', text: t('no_users')});
        ui.status = el('p', {className: 'gchat-status', role: 'status'});
        var body = el('div', {className: 'gchat-panel-body', id: 'gchat-panel-body'},
            [ui.status, ui.list, ui.empty]);
        if (block) {
            // An HTML block in Moodle: the list lives in the page, like the old block did.
            ui.blockRoot = el('div', {className: 'gchat gchat-in-block', role: 'region',
                'aria-label': t('title'), lang: (info.lang || 'en').replace('_', '-')}, [body]);
            ui.count = el('span', {className: 'gchat-count'});
            block.appendChild(ui.blockRoot);
        } else {
            ui.count = el('span', {className: 'gchat-count'});
            ui.panelToggle = el('button', {type: 'button', className: 'gchat-panel-header',
                'aria-expanded': 'true', 'aria-controls': 'gchat-panel-body'},
                [el('span', {className: 'gchat-dot', 'aria-hidden': 'true'}),
                    el('span', {className: 'gchat-panel-title', text: t('title')}), ' ', ui.count]);
            ui.panel = el('section', {className: 'gchat-panel', role: 'region', 'aria-label': t('title')},
                [ui.panelToggle, body]);
            on(ui.panelToggle, 'click', function () {
                setPanelCollapsed(!hasClassName(ui.panel, 'gchat-collapsed'));
            });
            ui.dock.appendChild(ui.panel);
            setPanelCollapsed(storageGet(STORE_PANEL) === 'collapsed', true);
        }
        paintPanel();
        containerElement().appendChild(ui.root);
        on(document, 'visibilitychange', onVisibility);
        on(window, 'focus', onVisibility);
        on(window, 'pagehide', function () {
            unloading = true;
        });
        on(window, 'pageshow', function (event) {
            if (event.persisted && unloading) {
                // restored from the back/forward cache: the old connection is gone
                unloading = false;
                reconnectAttempt = 0;
                connect();
            }
        });
        on(window, 'offline', function () {
            // The browser knows the network is gone: do not wait for TCP to find out.
            if (conn && !ended) {
                var kind = conn.kind;
                disconnect();
                transportDown(kind, false, 'offline');
            }
        });
        on(window, 'online', function () {
            if (reconnectTimer) {
                reconnectAttempt = 0;
                connect();
            }
        });
        renderBuddies();
    }

    function hasClassName(node, name) {
        return (' ' + node.className + ' ').indexOf(' ' + name + ' ') >= 0;
    }

    function setPanelCollapsed(collapsed, initial) {
        toggleClass(ui.panel, 'gchat-collapsed', collapsed);
        ui.panelToggle.setAttribute('aria-expanded', collapsed ? 'false' : 'true');
        ui.panelToggle.setAttribute('title', collapsed ? t('show_list') : t('hide_list'));
        if (!initial) {
            storageSet(STORE_PANEL, collapsed ? 'collapsed' : 'open');
        }
    }

    function paintPanel() {
        if (ui.panelToggle) {
            ui.panelToggle.style.backgroundColor = color('header');
            ui.panelToggle.style.color = color('header_text');
            ui.panel.style.borderColor = color('border');
        }
    }

    function renderStatus() {
        if (!ui.status) {
            return;
        }
        var lost = info.state === 'reconnecting';
        setText(ui.status, lost ? t('reconnecting') : (info.state === 'connecting' ? t('connecting') : ''));
        toggleClass(ui.status, 'gchat-visible', lost || info.state === 'connecting');
        toggleClass(ui.root, 'gchat-offline', lost);
        if (ui.blockRoot) {
            toggleClass(ui.blockRoot, 'gchat-offline', lost);
        }
    }

    function renderBuddies() {
        if (!ui.list) {
            return;
        }
        var users = [];
        for (var id in online) {
            if (has(online, id)) {
                users.push(online[id]);
            }
        }
        users.sort(function (a, b) {
            var an = String(a.name || ''), bn = String(b.name || '');
            var c = an.localeCompare ? an.localeCompare(bn) : (an < bn ? -1 : an > bn ? 1 : 0);
            return c || Number(a.id) - Number(b.id);
        });
        var focusedId = null;
        if (ui.list.contains(document.activeElement)) {
            focusedId = document.activeElement.getAttribute('data-user-id');
        }
        while (ui.list.firstChild) {
            ui.list.removeChild(ui.list.firstChild);
        }
        forEach(users, function (user) {
            var button = el('button', {type: 'button', className: 'gchat-buddy', 'data-user-id': user.id,
                title: t('open_chat_with', {name: user.name})},
                [avatar(user, 24), el('span', {className: 'gchat-buddy-name', text: user.name})]);
            on(button, 'click', function () {
                openWith(user);
            });
            ui.list.appendChild(el('li', null, [button]));
            if (focusedId !== null && sameId(focusedId, user.id)) {
                button.focus();
            }
        });
        toggleClass(ui.empty, 'gchat-hidden', users.length > 0 || !seenReady);
        setText(ui.count, users.length ? '(' + users.length + ')' : '');
    }

    function avatar(user, size) {
        var url = safeImageUrl(user.picture);
        var initials = el('span', {className: 'gchat-initials', 'aria-hidden': 'true',
            text: String(user.name || '?').charAt(0).toUpperCase()});
        if (!url) {
            return initials;
        }
        var img = el('img', {className: 'gchat-avatar', src: url, alt: '', width: size, height: size});
        on(img, 'error', function () {
            if (img.parentNode) {
                img.parentNode.replaceChild(initials, img);
            }
        });
        return img;
    }

    function flashPanelError(reply) {
        var code = errorCode(reply);
        var key = code === 'not_allowed' ? 'error_not_allowed' : (code === 'rate_limited' ?
            'error_rate_limited' : (code === 'unavailable' ? 'error_unavailable' : 'error_generic'));
        if (ui.live) {
            setText(ui.live, t(key));
        }
    }

    function announce(conv, m) {
        if (!ui.live) {
            return;
        }
        // The log region of a window the user is in announces by itself; announce the rest.
        if (!conv.minimized && conv.dom && conv.dom.root.contains(document.activeElement)) {
            return;
        }
        setText(ui.live, t('new_message_from', {name: conv.peer.name, text: m.text}));
    }

    // ------------------------------------------------------------------ UI: chat windows

    function buildWindow(conv) {
        var peerName = conv.peer.name || '';
        var dom = {};
        var baseId = 'gchat-conv-' + String(conv.id).replace(/[^\w-]/g, '');
        dom.title = el('button', {type: 'button', className: 'gchat-win-title', 'aria-expanded': 'true',
            'aria-controls': baseId + '-body'});
        dom.titleName = el('span', {className: 'gchat-win-name', text: peerName});
        dom.presence = el('span', {className: 'gchat-presence', 'aria-hidden': 'true'});
        dom.badge = el('span', {className: 'gchat-badge'});
        dom.title.appendChild(dom.presence);
        dom.title.appendChild(dom.titleName);
        dom.title.appendChild(dom.badge);
        dom.minimise = el('button', {type: 'button', className: 'gchat-win-min'},
            [el('span', {'aria-hidden': 'true', text: '\u2013'})]);
        dom.close = el('button', {type: 'button', className: 'gchat-win-close',
            'aria-label': t('close'), title: t('close')}, [el('span', {'aria-hidden': 'true', text: '\u00d7'})]);
        dom.header = el('div', {className: 'gchat-win-header'}, [dom.title, dom.minimise, dom.close]);

        dom.older = el('button', {type: 'button', className: 'gchat-older', text: t('load_older')});
        dom.olderNote = el('p', {className: 'gchat-older-note', text: t('no_older')});
        dom.log = el('div', {className: 'gchat-log', role: 'log', 'aria-live': 'polite',
            'aria-label': t('messages', {name: peerName}), tabindex: '0'});
        dom.top = el('div', {className: 'gchat-log-top'}, [dom.older, dom.olderNote]);
        dom.log.appendChild(dom.top);
        dom.typing = el('div', {className: 'gchat-typing', 'aria-hidden': 'true'});
        dom.error = el('div', {className: 'gchat-win-error', role: 'alert'});
        dom.input = el('textarea', {className: 'gchat-input', rows: '1', placeholder: t('placeholder'),
            'aria-label': t('message_label', {name: peerName}),
            maxlength: Number(settings.max_message_length) || 1333});
        dom.send = el('button', {type: 'submit', className: 'gchat-send', text: t('send')});
        dom.form = el('form', {className: 'gchat-form'}, [dom.input, dom.send]);
        dom.body = el('div', {className: 'gchat-win-body', id: baseId + '-body'},
            [dom.log, dom.typing, dom.error, dom.form]);
        dom.root = el('section', {className: 'gchat-win', role: 'dialog', 'aria-modal': 'false',
            'aria-label': t('chat_with', {name: peerName}), 'data-conversation': conv.id,
            'data-peer': conv.peer.id}, [dom.header, dom.body]);
        conv.dom = dom;
        // The dock lays out left to right, ending with the buddy panel at the right edge; a new
        // window goes to the left of the ones already open, so DOM (tab) order = visual order.
        ui.dock.insertBefore(dom.root, ui.dock.firstChild);

        on(dom.title, 'click', function () {
            setMinimized(conv, !conv.minimized);
            if (!conv.minimized) {
                focusInput(conv);
            }
        });
        on(dom.minimise, 'click', function () {
            setMinimized(conv, !conv.minimized);
        });
        on(dom.close, 'click', function () {
            closeConversation(conv);
        });
        on(dom.older, 'click', function () {
            loadOlder(conv);
        });
        on(dom.log, 'scroll', function () {
            if (dom.log.scrollTop < 30) {
                loadOlder(conv);
            }
        });
        on(dom.form, 'submit', function (event) {
            event.preventDefault();
            submit(conv);
        });
        on(dom.input, 'keydown', function (event) {
            var key = event.key || event.keyCode;
            if ((key === 'Enter' || key === 13) && !event.shiftKey && !event.isComposing) {
                event.preventDefault();
                submit(conv);
            }
        });
        on(dom.input, 'input', function () {
            clearWindowError(conv);
            autoGrow(dom.input);
            if (dom.input.value) {
                noteTyping(conv);
            }
        });
        on(dom.root, 'keydown', function (event) {
            var key = event.key || event.keyCode;
            if (key === 'Escape' || key === 'Esc' || key === 27) {
                event.preventDefault();
                if (!conv.minimized) {
                    setMinimized(conv, true);
                    dom.title.focus();
                }
            }
        });
        on(dom.root, 'focusin', function () {
            maybeSeen(conv);
        });
        on(dom.root, 'mousedown', function () {
            window.setTimeout(function () {
                maybeSeen(conv);
            }, 0);
        });
        renderWindowState(conv);
        renderOlderControl(conv);
        renderHeader(conv);
    }

    function submit(conv) {
        var input = conv.dom.input;
        if (sendText(conv, input.value)) {
            input.value = '';
            autoGrow(input);
            conv.lastTypingSent = 0;
        }
        input.focus();
    }

    function autoGrow(textarea) {
        textarea.style.height = 'auto';
        textarea.style.height = Math.min(textarea.scrollHeight, 96) + 'px';
    }

    function focusInput(conv) {
        if (conv.dom && !conv.minimized) {
            conv.dom.input.focus();
        }
    }

    function showWindowError(conv, text) {
        setText(conv.dom.error, text);
        addClass(conv.dom.error, 'gchat-visible');
    }

    function clearWindowError(conv) {
        if (conv.dom.error.firstChild) {
            setText(conv.dom.error, '');
            removeClass(conv.dom.error, 'gchat-visible');
        }
    }

    function renderWindowState(conv) {
        var dom = conv.dom;
        if (!dom) {
            return;
        }
        var wasMinimized = dom.root.getAttribute('data-minimized') !== 'false';
        toggleClass(dom.root, 'gchat-minimized', conv.minimized);
        dom.title.setAttribute('aria-expanded', conv.minimized ? 'false' : 'true');
        var label = conv.minimized ? t('maximise') : t('minimise');
        dom.minimise.setAttribute('aria-label', label);
        dom.minimise.setAttribute('title', label);
        setText(dom.minimise.firstChild, conv.minimized ? '\u25a1' : '\u2013');
        dom.root.setAttribute('data-minimized', conv.minimized ? 'true' : 'false');
        if (wasMinimized && !conv.minimized) {
            dom.log.scrollTop = dom.log.scrollHeight; // just shown: start at the newest message
        }
    }

    function renderHeader(conv) {
        var dom = conv && conv.dom;
        if (!dom) {
            return;
        }
        var unread = unreadOf(conv);
        var isOnline = has(online, conv.peer.id);
        setText(dom.titleName, conv.peer.name || '');
        setText(dom.badge, unread ? String(unread) : '');
        dom.badge.setAttribute('aria-label', unread ? t('unread', {count: unread}) : '');
        toggleClass(dom.badge, 'gchat-hidden', !unread);
        dom.root.setAttribute('data-unread', String(unread));
        toggleClass(dom.root, 'gchat-unread', unread > 0);
        dom.header.style.backgroundColor = unread ? color('header_unread') : color('header');
        dom.header.style.color = color('header_text');
        dom.root.style.borderColor = color('border');
        toggleClass(dom.presence, 'gchat-online', isOnline);
        dom.presence.setAttribute('title', isOnline ? t('online') : t('offline'));
    }

    function renderOlderControl(conv) {
        var dom = conv.dom;
        if (!dom) {
            return;
        }
        var hasIds = false;
        forEach(conv.items, function (item) {
            if (item.message.id !== undefined && item.message.id !== null) {
                hasIds = true;
            }
        });
        toggleClass(dom.older, 'gchat-hidden', !conv.hasOlder || !hasIds);
        toggleClass(dom.olderNote, 'gchat-hidden', conv.hasOlder || !hasIds);
        setText(dom.older, conv.loadingOlder ? t('loading') : t('load_older'));
        dom.older.disabled = conv.loadingOlder;
    }

    function renderTyping(conv) {
        if (!conv.dom) {
            return;
        }
        var showing = conv.typingUntil > now();
        setText(conv.dom.typing, showing ? t('typing', {name: conv.peer.name}) : '');
        toggleClass(conv.dom.typing, 'gchat-visible', showing);
    }

    function renderMessage(conv, item) {
        var m = item.message;
        var mine = sameId(m.from, me && me.id);
        var bubble = el('div', {className: 'gchat-text'});
        appendLinkified(bubble, String(m.text === undefined ? '' : m.text));
        var time = el('time', {className: 'gchat-time'});
        var stamp = Number(m.time) || now();
        var date = new Date(stamp);
        setText(time, formatTime(date));
        time.setAttribute('datetime', date.toISOString ? date.toISOString() : '');
        time.setAttribute('title', date.toLocaleString ? date.toLocaleString() : String(date));
        var state = el('span', {className: 'gchat-state'});
        var meta = el('div', {className: 'gchat-meta'}, [time, state]);
        var node = el('div', {className: 'gchat-msg ' + (mine ? 'gchat-mine' : 'gchat-theirs'),
            'data-id': m.id === undefined ? null : m.id, 'data-client-id': m.client_id || null},
            [bubble, meta]);
        if (!mine) {
            node.insertBefore(el('span', {className: 'gchat-sr-only', text: (conv.peer.name || '') + ': '}), bubble);
        }
        item.stateEl = state;
        renderMessageState(conv, item, node);
        return node;
    }

    function renderMessageState(conv, item, nodeArg) {
        var node = nodeArg || item.el;
        if (!node || !item.stateEl) {
            return;
        }
        node.setAttribute('data-state', item.state);
        var state = item.stateEl;
        while (state.firstChild) {
            state.removeChild(state.firstChild);
        }
        if (item.state === 'pending') {
            state.appendChild(document.createTextNode(' \u00b7 ' + t('pending')));
        } else if (item.state === 'failed') {
            var reason = item.error === 'too_long' ? t('error_too_long',
                {max: Number(settings.max_message_length) || 1333}) :
                item.error === 'not_allowed' ? t('error_not_allowed') :
                item.error === 'empty' ? t('error_empty') : '';
            state.appendChild(document.createTextNode(' \u00b7 ' + t('failed') + (reason ? ' ' + reason : '') + ' '));
            var retry = el('button', {type: 'button', className: 'gchat-retry', text: t('retry')});
            on(retry, 'click', function () {
                retryMessage(conv, item);
            });
            state.appendChild(retry);
        }
        toggleClass(node, 'gchat-pending', item.state === 'pending');
        toggleClass(node, 'gchat-failed', item.state === 'failed');
    }

    function pad(n) {
        return n < 10 ? '0' + n : String(n);
    }

    function formatTime(date) {
        var clock = pad(date.getHours()) + ':' + pad(date.getMinutes());
        var today = new Date();
        if (date.toDateString() === today.toDateString()) {
            return clock;
        }
        var yesterday = new Date(today.getTime() - 86400000);
        if (date.toDateString() === yesterday.toDateString()) {
            return t('yesterday') + ' ' + clock;
        }
        return date.getFullYear() + '-' + pad(date.getMonth() + 1) + '-' + pad(date.getDate()) + ' ' + clock;
    }

    /* Put text into node, turning http(s) URLs into links. Everything is a text node or an <a>
       built with DOM calls; other schemes (javascript:, data:) never become links. */
    function appendLinkified(node, text) {
        var pattern = /\bhttps?:\/\/[^\s<>"']+/gi;
        var last = 0;
        var match;
        while ((match = pattern.exec(text)) !== null) {
            var url = match[0];
            var trailing = /[.,;:!?)\]}]+$/.exec(url);
            if (trailing) {
                url = url.slice(0, url.length - trailing[0].length);
            }
            if (match.index > last) {
                node.appendChild(document.createTextNode(text.slice(last, match.index)));
            }
            var a = document.createElement('a');
            a.href = url;
            if (a.protocol === 'http:' || a.protocol === 'https:') {
                a.setAttribute('target', '_blank');
                a.setAttribute('rel', 'noopener noreferrer');
                a.textContent = url;
                node.appendChild(a);
            } else {
                node.appendChild(document.createTextNode(url));
            }
            last = match.index + url.length;
            pattern.lastIndex = last;
        }
        if (last < text.length) {
            node.appendChild(document.createTextNode(text.slice(last)));
        }
    }

    // ------------------------------------------------------------------ attention: title flashing

    var flashTimer = null;
    var flashOn = false;
    var flashFrom = null; // the conversation that last got a message while the page was away

    function pageAway() {
        return document.hidden || !document.hasFocus();
    }

    function noteIncoming(conv) {
        if (pageAway()) {
            flashFrom = conv;
            updateTitleFlash();
        }
    }

    function totalUnread() {
        var total = 0;
        forEach(conversationOrder, function (id) {
            if (convs[id]) {
                total += unreadOf(convs[id]);
            }
        });
        return total;
    }

    function updateTitleFlash() {
        var total = totalUnread();
        if (!flashFrom || !pageAway() || !total) {
            stopTitleFlash();
            return;
        }
        if (flashTimer) {
            return;
        }
        pageTitle = document.title;
        flashTimer = window.setInterval(function () {
            flashOn = !flashOn;
            var name = flashFrom && flashFrom.peer ? flashFrom.peer.name : '';
            document.title = flashOn ? t('title_flash', {count: totalUnread(), name: name}) : pageTitle;
        }, TITLE_FLASH_MS);
    }

    function stopTitleFlash() {
        if (flashTimer) {
            window.clearInterval(flashTimer);
            flashTimer = null;
            document.title = pageTitle;
        }
        flashOn = false;
    }

    function onVisibility() {
        if (!pageAway()) {
            flashFrom = null;
            stopTitleFlash();
            forEach(conversationOrder, function (id) {
                maybeSeen(convs[id]);
            });
            if (reconnectTimer && !document.hidden) {
                // back in front of the user: do not make them wait for the backoff
                window.clearTimeout(reconnectTimer);
                reconnectTimer = null;
                connect();
            }
        }
    }

    // ------------------------------------------------------------------ go

    if (document.readyState === 'loading') {
        on(document, 'DOMContentLoaded', start);
    } else {
        start();
    }
}(window, document));
