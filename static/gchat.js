/*
 * gchat widget: the chat panel (online course-mates, recent conversations, search) and docked
 * chat windows for Moodle pages.
 *
 * Installation is one tag, pasted into Moodle's "Additional HTML" footer:
 *     <script src="https://moodle.example.org/gchat/static/gchat.js"></script>
 * The server's base URL is derived from that src (".../gchat/static/gchat.js" -> ".../gchat").
 *
 * Plain ES5 on purpose (tests/test_static_es5.py enforces it): no let/const, arrows, classes,
 * template literals, Promises or frameworks, so it runs in whatever browser a school has.
 * Wire contract: docs/protocol.md. Every piece of user data is put into the page with
 * textContent / createTextNode / setAttribute, never with innerHTML.
 *
 * Keyboard: Alt+Shift+C focuses the chat (the open conversation's input, else the panel's search).
 *
 * The state lives in four objects, one per area: `connection` (bootstrap, token, life cycle),
 * `transport` (the WebSocket or long-poll connection, commands in flight), `conversations`
 * (people, windows, messages, receipts) and `ui` (the page's elements, view state, texts).
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
    var BOOTSTRAP_TIMEOUT_MS = 20000;
    var BACKOFF_BASE_MS = 800;
    var BACKOFF_MAX_MS = 30000;
    var TYPING_SEND_EVERY_MS = 3000;
    var TYPING_SHOW_MS = 5000;
    var TITLE_FLASH_MS = 1200;
    var HISTORY_PAGE = 20;
    var PAGE_SIZE = 20;                     // conversations and search results per request
    var SEARCH_DELAY_MS = 250;              // typing pause before a search is sent
    var RECENT_REFRESH_MS = 400;            // coalesces refreshes of the recent list
    var GROUP_GAP_MS = 5 * 60000;           // consecutive messages closer than this form a group
    var NEAR_BOTTOM_PX = 40;
    var COUNTER_FROM = 0.8;                 // the character counter shows from 80 % of the limit
    var DEFAULT_MAX_LENGTH = 1333;
    var TOKEN_RENEW_FRACTION = 0.8;
    var RESIZE_DELAY_MS = 100;
    var PHONE_MAX_WIDTH = 600;              // matches the @media rule in gchat.css
    // Desktop dock geometry in px; matches gchat.css.
    var DOCK = {padding: 15, gap: 15, window: 270, minimized: 200, overflow: 56};
    var STORE_TRANSPORT = 'gchat.transport';
    var STORE_OUTBOX = 'gchat.outbox';
    var STORE_PANEL = 'gchat.panel';
    var STORE_VIEW = 'gchat.view';
    var SIGNAL_CHANNEL = 'gchat';
    var SIGNAL_KEY = 'gchat.signal';        // localStorage fallback of the BroadcastChannel
    var SHORTCUT = 'Alt+Shift+C';
    // WCAG 2.1 AA with white text (5.4:1 and 6.8:1); the server's settings normally override.
    var DEFAULT_COLORS = {
        header: '#267A24', header_unread: '#8A4B00', header_text: '#FFFFFF', border: '#767676'
    };
    // Used only when the server's strings table lacks a key (an older server).
    var FALLBACK_STRINGS = {
        title: 'Global Chat', no_users: 'No online users.', reconnecting: 'Connection lost, retrying…',
        send: 'Send', close: 'Close', minimise: 'Minimise', maximise: 'Maximise',
        typing: '{name} is typing…', pending: 'Sending…', failed: 'Not sent.', retry: 'Retry',
        load_older: 'Load older messages', logged_out: 'You are logged out of Moodle.',
        error_generic: 'Something went wrong.'
    };

    // WebSocket close codes (docs/protocol.md §2) and what each means for the widget.
    var CLOSE = {GOING_AWAY: 1001, POLICY: 1008, TOO_BIG: 1009, SERVER_ERROR: 1011, TRY_AGAIN: 1013,
        SESSION_ENDED: 4000};
    var CLOSE_KINDS = {};
    CLOSE_KINDS[CLOSE.SESSION_ENDED] = 'session_ended';
    CLOSE_KINDS[CLOSE.TRY_AGAIN] = 'server';
    CLOSE_KINDS[CLOSE.GOING_AWAY] = 'server';

    /* Every error code of the protocol (docs/protocol.md §7), in one table:
       kind      what a connection that ends with it does: 'session_ended' (stop, logged out),
                 'auth' (renew the token, reconnect), 'server' (reconnect later, same transport)
       text      the string shown to the user
       permanent a send refused with it is not retried by itself */
    var ERRORS = {
        not_logged_in: {kind: 'session_ended', text: 'logged_out'},
        session_ended: {kind: 'session_ended', text: 'logged_out'},
        bad_token: {kind: 'auth', text: 'error_generic'},
        token_expired: {kind: 'auth', text: 'error_generic'},
        bad_origin: {text: 'error_generic', permanent: true},
        bad_json: {text: 'error_generic', permanent: true},
        bad_command: {text: 'error_generic', permanent: true},
        too_long: {text: 'error_too_long', permanent: true},
        empty: {text: 'error_empty', permanent: true},
        rate_limited: {text: 'error_rate_limited'},
        not_allowed: {text: 'error_not_allowed', permanent: true},
        not_found: {text: 'error_generic', permanent: true},
        too_many_connections: {kind: 'server', text: 'error_unavailable'},
        unavailable: {kind: 'server', text: 'error_unavailable'},
        shutting_down: {kind: 'server', text: 'error_unavailable'}
    };
    // not_allowed carries a reason: each has its own explanation.
    var REFUSALS = {
        blocked: 'error_blocked', contacts_only: 'error_contacts_only', no_shared_course: 'error_no_shared_course',
        messaging_disabled: 'error_messaging_disabled', cannot_send: 'error_cannot_send',
        not_member: 'error_not_member'
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

    function storageGet(key, local) {
        try {
            var store = local ? window.localStorage : window.sessionStorage;
            return store ? store.getItem(key) : null;
        } catch (e) {
            return null; // storage disabled (privacy settings): behave as a fresh session
        }
    }

    function storageSet(key, value, local) {
        try {
            var store = local ? window.localStorage : window.sessionStorage;
            if (store) {
                if (value === null) {
                    store.removeItem(key);
                } else {
                    store.setItem(key, value);
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

    function hasId(m) {
        return m.id !== undefined && m.id !== null;
    }

    // Characters as the server counts them (code points): a surrogate pair is one.
    function codePoints(text) {
        return String(text).replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g, '_').length;
    }

    function hasClassName(node, name) {
        return (' ' + node.className + ' ').indexOf(' ' + name + ' ') >= 0;
    }

    function addClass(node, name) {
        if (!hasClassName(node, name)) {
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

    function keyOf(event) {
        var key = event.key || event.keyCode;
        return key === 27 || key === 'Esc' ? 'Escape' : (key === 13 ? 'Enter' : key);
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

    function button(className, text, attrs) {
        var node = el('button', attrs || {}, [text]);
        node.type = 'button';
        node.className = className;
        return node;
    }

    function setText(node, text) {
        node.textContent = text === null || text === undefined ? '' : String(text);
    }

    function empty(node) {
        while (node.firstChild) {
            node.removeChild(node.firstChild);
        }
    }

    function removeNode(node) {
        if (node && node.parentNode) {
            node.parentNode.removeChild(node);
        }
    }

    function show(node, visible) {
        toggleClass(node, 'gchat-hidden', !visible);
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

    // ------------------------------------------------------------------ state

    var connection = {
        state: 'starting',      // see setState()
        token: null,
        cursor: null,           // the last event cursor processed
        ended: false,
        messaging: true,        // bootstrap: the site's messaging switch
        canSend: true,          // bootstrap: moodle/site:sendmessage
        unloading: false,       // the page is going away: a dropped connection is no news
        seenReady: false,       // a ready snapshot arrived on this page
        bootstrapAttempt: 0,
        renewTimer: null,
        renewing: false,
        renewWaiters: [],
        reconnectTimer: null,
        reconnectAttempt: 0,
        authRetries: 0,
        generation: 0,          // callbacks of an older connection are ignored
        signals: null           // BroadcastChannel to the other tabs, when the browser has one
    };

    var transport = {
        conn: null,             // the current transport object
        wsProven: false,        // a WebSocket delivered events on this page
        wsFailStreak: 0,
        tabId: randomId(16),
        nextRef: 1,
        inflight: {},           // ref -> {callback, timer}
        outbox: []              // commands waiting for a connection: {cmd, callback}
    };

    var conversations = {
        me: null,
        online: {},             // user id -> user
        onlineTotal: null,      // ready.online_total: the server listed only the first ones
        coursemates: null,      // ready.coursemates
        byId: {},               // conversation id -> conversation (see makeConversation)
        order: [],              // ids, most recently used first (first = next to the panel)
        pendingSends: {},       // client_id -> {conversation, text, client_id, time, inflight, attempts}
        closing: {},            // conversation id -> true: this tab closed it, the server has not answered
        recent: null,           // the recent conversations as the server listed them, or null
        recentMore: false,
        recentLoading: false,
        recentTimer: null,
        overflowList: []        // the conversations in the "+N" menu (layout() decides)
    };

    var ui = {
        strings: {},
        settings: {colors: DEFAULT_COLORS, history_size: 10, max_message_length: DEFAULT_MAX_LENGTH},
        lang: null,
        root: null, dock: null, panel: null, panelToggle: null, blockRoot: null, body: null,
        banner: null, dot: null, count: null, live: null, panelError: null, readOnly: null,
        tabs: null, tabOnline: null, tabRecent: null, onlineView: null, list: null, empty: null, more: null,
        recentView: null, recentList: null, recentEmpty: null, recentMoreButton: null,
        search: null, searchView: null, searchList: null, searchEmpty: null, searchMoreButton: null,
        overflow: null, overflowButton: null, overflowMenu: null,
        view: 'online',         // the panel's list: 'online' | 'recent'
        phone: false,
        query: '',
        searchTimer: null,
        searchSeq: 0,
        searchOffset: 0,
        searchResults: [],      // the users the search found, as shown
        searchMore: false,
        resizeTimer: null,
        flashTimer: null,
        flashOn: false,
        flashFrom: null,        // the conversation that last got a message while the page was away
        pageTitle: document.title
    };

    // ------------------------------------------------------------------ public info for tests

    var info = {
        loaded: true,
        version: '2',
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
            forEach(conversations.order, function (id) {
                var conv = conversations.byId[id];
                if (!conv) {
                    return;
                }
                var ids = [];
                forEach(conv.items, function (item) {
                    ids.push(hasId(item.message) ? item.message.id : null);
                });
                out.push({
                    id: conv.id, 'with': conv.peer, open: conv.open, minimized: conv.minimized,
                    unread: unreadOf(conv), messages: ids, peer_read: conv.peerRead, shown: !conv.overflowed
                });
            });
            return {online: keys(conversations.online).length, conversations: out};
        }
    };
    window.gchat = info;

    function setState(state) {
        // starting | hidden (not logged in) | disabled (messaging off) | connecting | connected |
        // reconnecting | ended (logged out of Moodle)
        connection.state = state;
        info.state = state;
        info.connected = state === 'connected';
        if (ui.root) {
            ui.root.setAttribute('data-state', state);
            renderStatus();
        }
    }

    function t(key, params) {
        var text = has(ui.strings, key) ? ui.strings[key] :
            (has(FALLBACK_STRINGS, key) ? FALLBACK_STRINGS[key] : key);
        if (params) {
            text = String(text).replace(/\{(\w+)\}/g, function (whole, name) {
                return has(params, name) ? String(params[name]) : whole;
            });
        }
        return text;
    }

    // The text for a failed command's error (not_allowed: by its reason).
    function errorText(error) {
        var code = error && error.code;
        if (code === 'not_allowed' && error.reason && has(REFUSALS, error.reason)) {
            return t(REFUSALS[error.reason]);
        }
        if (code === 'too_long') {
            return t('error_too_long', {max: maxLength()});
        }
        return t(code && has(ERRORS, code) ? ERRORS[code].text : 'error_generic');
    }

    function color(name) {
        var colors = ui.settings.colors || {};
        var value = colors[name];
        // Only plain colour values reach a style attribute.
        if (typeof value === 'string' && (/^(#[0-9a-f]{3,8}|[a-z]+|rgba?\([0-9.,%\s]+\))$/i).test(value)) {
            return value;
        }
        return DEFAULT_COLORS[name];
    }

    function maxLength() {
        return Number(ui.settings.max_message_length) || DEFAULT_MAX_LENGTH;
    }

    function isMe(userId) {
        return sameId(userId, conversations.me && conversations.me.id);
    }

    // Presence is known only while connected; otherwise it is shown as unknown.
    function presenceOf(userId) {
        if (connection.state !== 'connected') {
            return 'unknown';
        }
        return has(conversations.online, userId) ? 'online' : 'offline';
    }

    function presenceText(presence) {
        return t(presence === 'unknown' ? 'presence_unknown' : presence);
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

    function errorKind(code) {
        return code && has(ERRORS, code) ? ERRORS[code].kind || null : null;
    }

    // ------------------------------------------------------------------ bootstrap and token

    function bootstrap(callback) {
        // callback(result): 'ok' | 'logged_out' | 'unreachable'
        request('GET', '/api/bootstrap', {timeout: BOOTSTRAP_TIMEOUT_MS}, function (status, body) {
            if (status === 200 && body && body.token) {
                connection.bootstrapAttempt = 0;
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
        connection.token = body.token;
        info.tokens++;
        if (body.user) {
            conversations.me = body.user;
            info.user = body.user;
        }
        if (body.strings) {
            ui.strings = body.strings;
        }
        if (body.settings) {
            ui.settings = body.settings;
            if (!ui.settings.colors) {
                ui.settings.colors = DEFAULT_COLORS;
            }
        }
        // Absent (an older server) means allowed.
        connection.messaging = body.messaging !== false;
        var couldSend = connection.canSend;
        connection.canSend = body.can_send !== false;
        ui.lang = body.lang || null;
        info.lang = ui.lang;
        scheduleTokenRenewal();
        if (ui.root && couldSend !== connection.canSend) {
            renderCapabilities();
        }
    }

    function scheduleTokenRenewal() {
        if (connection.renewTimer) {
            window.clearTimeout(connection.renewTimer);
        }
        var ttl = Number(ui.settings.token_ttl) || 3600;
        connection.renewTimer = window.setTimeout(function () {
            connection.renewTimer = null;
            renewToken();
        }, Math.max(1, ttl * TOKEN_RENEW_FRACTION) * 1000);
    }

    /* Fetch a fresh token. A live WebSocket keeps running (its token was checked at connect);
       the new token is used for the next connection and for every long-poll request. */
    function renewToken(callback) {
        if (callback) {
            connection.renewWaiters.push(callback);
        }
        if (connection.renewing || connection.ended) {
            return;
        }
        connection.renewing = true;
        bootstrap(function (result) {
            connection.renewing = false;
            var waiters = connection.renewWaiters;
            connection.renewWaiters = [];
            if (result === 'logged_out') {
                endSession(true);
            } else if (result === 'unreachable' && !connection.renewTimer) {
                connection.renewTimer = window.setTimeout(function () {
                    connection.renewTimer = null;
                    renewToken();
                }, backoffDelay(2));
            } else if (result === 'ok' && !connection.messaging) {
                disableMessaging();
            }
            forEach(waiters, function (fn) {
                fn(result);
            });
        });
    }

    function start() {
        listenToOtherTabs();
        bootstrap(function (result) {
            if (result === 'ok') {
                buildUi();
                if (connection.messaging) {
                    connect();
                } else {
                    disableMessaging();
                }
            } else if (result === 'logged_out') {
                setState('hidden'); // not logged in, or a guest: stay invisible
                tellOtherTabs('logged_out'); // the session the other tabs share may be gone
            } else {
                // Server unreachable: stay invisible and try again later.
                window.setTimeout(start, backoffDelay(connection.bootstrapAttempt++ + 2));
            }
        });
    }

    // The Moodle session is over: say so, in this tab and (told by it) in every other.
    function endSession(tell) {
        if (connection.ended) {
            return;
        }
        connection.ended = true;
        disconnect();
        if (connection.renewTimer) {
            window.clearTimeout(connection.renewTimer);
        }
        stopTitleFlash();
        storageSet(STORE_OUTBOX, null);
        forEach(conversations.order.slice(), removeConversation);
        conversations.online = {};
        setState('ended');
        renderPanelLists();
        if (tell) {
            tellOtherTabs('logged_out');
        }
    }

    // Chat is off on this site (bootstrap said messaging: false): say so, do not connect.
    function disableMessaging() {
        disconnect();
        forEach(conversations.order.slice(), removeConversation);
        conversations.online = {};
        setState('disabled');
        renderPanelLists();
    }

    // ------------------------------------------------------------------ other tabs

    /* A tab that learns that the Moodle session ended (bootstrap 401, session_ended) tells the
       others of this origin at once. They check with bootstrap themselves rather than trust the
       message (it may come from a tab loaded before a new login), which takes one request. */
    function listenToOtherTabs() {
        if (window.BroadcastChannel) {
            try {
                connection.signals = new window.BroadcastChannel(SIGNAL_CHANNEL);
                connection.signals.onmessage = function (event) {
                    onSignal(event.data);
                };
            } catch (e) {
                connection.signals = null;
            }
        }
        on(window, 'storage', function (event) {
            if (event.key === SIGNAL_KEY && event.newValue) {
                onSignal(parseJSON(event.newValue));
            }
        });
    }

    function tellOtherTabs(type) {
        var message = {type: type, tab: transport.tabId, time: now()};
        if (connection.signals) {
            try {
                connection.signals.postMessage(message);
                return;
            } catch (e) {
                // fall through to localStorage
            }
        }
        storageSet(SIGNAL_KEY, JSON.stringify(message), true);
    }

    function onSignal(message) {
        if (!message || message.type !== 'logged_out' || message.tab === transport.tabId) {
            return;
        }
        if (connection.ended || connection.state === 'hidden' || connection.state === 'starting') {
            return;
        }
        renewToken(); // a 401 ends the session here too (renewToken calls endSession)
    }

    // ------------------------------------------------------------------ connection management

    function preferredTransport() {
        if (!window.WebSocket) {
            return 'longpoll';
        }
        if (storageGet(STORE_TRANSPORT) === 'longpoll' && !transport.wsProven) {
            return 'longpoll';
        }
        return 'websocket';
    }

    function connect() {
        if (connection.ended || !connection.messaging) {
            return;
        }
        if (connection.reconnectTimer) {
            window.clearTimeout(connection.reconnectTimer);
            connection.reconnectTimer = null;
        }
        disconnect();
        setState(info.reconnects || connection.reconnectAttempt ? 'reconnecting' : 'connecting');
        if (preferredTransport() === 'websocket') {
            openWebSocket();
        } else {
            openLongPoll();
        }
    }

    function disconnect() {
        connection.generation++;
        if (transport.conn) {
            var old = transport.conn;
            transport.conn = null;
            old.close();
        }
        failInflightReplies();
    }

    function scheduleReconnect() {
        if (connection.ended || connection.reconnectTimer) {
            return;
        }
        setState('reconnecting');
        var delay = backoffDelay(connection.reconnectAttempt++);
        connection.reconnectTimer = window.setTimeout(function () {
            connection.reconnectTimer = null;
            info.reconnects++;
            connect();
        }, delay);
    }

    // Called by a transport once it delivered its first event.
    function transportUp(kind) {
        connection.reconnectAttempt = 0;
        connection.authRetries = 0;
        info.transport = kind;
        storageSet(STORE_TRANSPORT, kind);
        setState('connected');
        flushOutbox();
    }

    /* A transport failed. reason: 'session_ended' | 'auth' (token refused) | 'server' (the
       server said "try again later") | anything else (closed, timeout, network).
       beforeFirstEvent: it never delivered anything (blocked upgrade, server down). Then ask
       bootstrap whether the server is there (this also renews the token): if it is, the
       WebSocket path itself is what fails, so fall back to long-polling. */
    function transportDown(kind, beforeFirstEvent, reason) {
        if (connection.ended || connection.unloading) {
            return;
        }
        connection.generation++;
        transport.conn = null;
        failInflightReplies();
        if (reason === 'session_ended') {
            endSession(true);
            return;
        }
        if (reason === 'auth') {
            setState('reconnecting');
            var authGeneration = connection.generation;
            renewToken(function (result) {
                if (authGeneration !== connection.generation || connection.ended || connection.reconnectTimer) {
                    return;
                }
                if (result === 'ok' && connection.authRetries++ < 3) {
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
                transport.wsFailStreak = 0;
            }
            scheduleReconnect();
            return;
        }
        setState('reconnecting');
        var generation = connection.generation;
        renewToken(function (result) {
            if (generation !== connection.generation || connection.ended || connection.reconnectTimer) {
                return;
            }
            if (result !== 'ok') {
                scheduleReconnect(); // server away: same transport later
                return;
            }
            if (kind === 'websocket') {
                transport.wsFailStreak++;
                if (!transport.wsProven || transport.wsFailStreak >= 2) {
                    transport.wsProven = false;
                    storageSet(STORE_TRANSPORT, 'longpoll');
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
        var generation = connection.generation;
        var url = wsUrl('/ws?token=' + encodeURIComponent(connection.token) +
            (connection.cursor ? '&cursor=' + encodeURIComponent(connection.cursor) : ''));
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

        transport.conn = {
            kind: 'websocket',
            send: function (cmd) {
                if (closed || socket.readyState !== 1) {
                    return false;
                }
                socket.send(JSON.stringify(cmd));
                return true;
            },
            close: stop
        };

        socket.onmessage = function (event) {
            if (generation !== connection.generation) {
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
                closeReason = errorKind(data.code) || 'closed';
                return;
            }
            if (!gotEvent) {
                gotEvent = true;
                transport.wsProven = true;
                transport.wsFailStreak = 0;
                window.clearTimeout(firstEventTimer);
                pingTimer = window.setInterval(function () {
                    command({type: 'ping'}, function (reply) {
                        if (reply.error && reply.error.code === 'timeout' && generation === connection.generation) {
                            stop(); // no answer: the socket is dead although the browser thinks not
                            transportDown('websocket', false, 'ping');
                        }
                    });
                }, WS_PING_INTERVAL_MS);
                handleEvent(data);
                if (generation === connection.generation) {
                    transportUp('websocket');
                }
                return;
            }
            handleEvent(data);
        };

        socket.onclose = function (event) {
            if (generation !== connection.generation) {
                return;
            }
            var wasFirst = !gotEvent;
            var code = event ? event.code : 0;
            stop();
            transportDown('websocket', wasFirst, has(CLOSE_KINDS, code) ? CLOSE_KINDS[code] : closeReason);
        };
    }

    // ------------------------------------------------------------------ long-poll transport

    function openLongPoll() {
        var generation = connection.generation;
        var current = null;
        var gotAnswer = false;
        var up = false;
        var heldTimer = null;
        var stopped = false;

        // Connected once the server answered, or holds a poll open: resuming from a cursor
        // with nothing new, the answer only comes with the next event or after 45-55 s.
        function reportUp() {
            window.clearTimeout(heldTimer);
            if (!up && !stopped && generation === connection.generation) {
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

        transport.conn = {
            kind: 'longpoll',
            send: function (cmd) {
                if (stopped) {
                    return false;
                }
                request('POST', '/api/send', {token: connection.token, body: cmd, timeout: REPLY_TIMEOUT_MS},
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
            if (stopped || generation !== connection.generation) {
                return;
            }
            var path = '/api/poll?tab=' + encodeURIComponent(transport.tabId) +
                (connection.cursor ? '&cursor=' + encodeURIComponent(connection.cursor) : '');
            if (!up) {
                heldTimer = window.setTimeout(reportUp, LONGPOLL_HELD_MS);
            }
            current = request('GET', path, {token: connection.token, timeout: LONGPOLL_CLIENT_TIMEOUT_MS},
                function (status, body) {
                    current = null;
                    window.clearTimeout(heldTimer);
                    if (stopped || generation !== connection.generation) {
                        return;
                    }
                    if (status === 200 && body && body.events) {
                        gotAnswer = true;
                        forEach(body.events, function (event) {
                            if (generation === connection.generation) {
                                handleEvent(event);
                            }
                        });
                        if (generation !== connection.generation) {
                            return; // an event ended the session or reset the connection
                        }
                        if (body.cursor) {
                            connection.cursor = body.cursor;
                            info.cursor = body.cursor;
                        }
                        reportUp();
                        poll();
                        return;
                    }
                    var kind = errorKind(errorCode(body));
                    var wasFirst = !gotAnswer;
                    stop();
                    if (kind === 'session_ended') {
                        transportDown('longpoll', false, 'session_ended');
                    } else if (kind === 'auth') {
                        transportDown('longpoll', wasFirst, 'auth');
                    } else if (status === 503 || status === 429) {
                        transportDown('longpoll', wasFirst, 'server');
                    } else {
                        transportDown('longpoll', wasFirst, 'http ' + status);
                    }
                });
        }
        poll();
    }

    // ------------------------------------------------------------------ commands and replies

    /* Send a command; callback(reply) gets exactly one reply, real or synthesised
       ({ok: false, error: {code: 'timeout'|'disconnected'|'network'}}). */
    function command(cmd, callback) {
        cmd.ref = transport.tabId + '-' + (transport.nextRef++);
        if (transport.conn && info.connected && transport.conn.send(cmd)) {
            track(cmd, callback);
        } else {
            transport.outbox.push({cmd: cmd, callback: callback});
        }
    }

    function track(cmd, callback) {
        var entry = {callback: callback, timer: null};
        entry.timer = window.setTimeout(function () {
            delete transport.inflight[cmd.ref];
            if (callback) {
                callback({type: 'reply', ref: cmd.ref, ok: false, error: {code: 'timeout', message: 'no reply'}});
            }
        }, REPLY_TIMEOUT_MS);
        transport.inflight[cmd.ref] = entry;
    }

    function handleReply(reply) {
        var entry = transport.inflight[reply.ref];
        if (!entry) {
            return;
        }
        delete transport.inflight[reply.ref];
        window.clearTimeout(entry.timer);
        var kind = reply.ok ? null : errorKind(errorCode(reply));
        if (kind === 'auth') {
            renewToken(function (result) {
                if (result === 'ok' && transport.conn && transport.conn.kind === 'websocket') {
                    connect(); // the socket's token is no good any more: reconnect with the new one
                }
            });
        } else if (kind === 'session_ended') {
            endSession(true);
        }
        if (entry.callback) {
            entry.callback(reply);
        }
    }

    function failInflightReplies() {
        var pending = transport.inflight;
        transport.inflight = {};
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
        var waiting = transport.outbox;
        transport.outbox = [];
        forEach(waiting, function (item) {
            if (transport.conn && info.connected && transport.conn.send(item.cmd)) {
                track(item.cmd, item.callback);
            } else {
                transport.outbox.push(item);
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
        var last = parseCursor(connection.cursor);
        return !!(next && last && next.epoch === last.epoch && next.seq <= last.seq);
    }

    function handleEvent(event) {
        if (connection.ended || !event || typeof event.type !== 'string') {
            return;
        }
        if (event.cursor) {
            if (event.type !== 'ready' && isRepeat(event.cursor)) {
                return;
            }
            connection.cursor = event.cursor;
            info.cursor = event.cursor;
        }
        info.events++;
        switch (event.type) {
        case 'ready':
            onReady(event);
            break;
        case 'presence':
            onPresence(event.user, event.status);
            break;
        case 'presence_batch':
            forEach(event.changes || [], function (change) {
                if (change) {
                    onPresence(change.user, change.status);
                }
            });
            break;
        case 'conversation':
            if (event.conversation) {
                applyConversation(event.conversation, false, true);
                refreshRecentSoon();
            }
            break;
        case 'message':
            if (event.message) {
                addMessage(event.message, 'event');
                refreshRecentSoon();
            }
            break;
        case 'read':
            onRead(event);
            break;
        case 'typing':
            onTyping(event);
            break;
        case 'error':
            if (errorKind(event.code) === 'session_ended') {
                endSession(true);
            }
            break;
        default:
            break; // a newer server's event: ignore it
        }
    }

    function onReady(event) {
        if (event.me) {
            conversations.me = event.me;
            info.user = event.me;
        }
        conversations.online = {};
        forEach(event.online || [], function (user) {
            if (user && !isMe(user.id)) {
                conversations.online[user.id] = user;
            }
        });
        conversations.onlineTotal = typeof event.online_total === 'number' ? event.online_total : null;
        conversations.coursemates = typeof event.coursemates === 'number' ? event.coursemates : null;
        var reset = !!event.reset || !connection.seenReady;
        connection.seenReady = true;
        var present = {};
        conversations.closing = {}; // the snapshot is newer than any state a close waits out
        forEach(event.conversations || [], function (data) {
            present[data.id] = true;
            applyConversation(data, reset);
        });
        forEach(conversations.order.slice(), function (id) {
            if (!present[id]) {
                removeConversation(id);
            }
        });
        conversations.recent = null;
        renderPanelLists();
        renderAllHeaders();
        restoreOutbox();
        layout();
    }

    function onPresence(user, status) {
        if (!user || isMe(user.id)) {
            return;
        }
        var wasOnline = has(conversations.online, user.id);
        if (status === 'offline') {
            delete conversations.online[user.id];
            if (wasOnline && conversations.onlineTotal !== null) {
                conversations.onlineTotal = Math.max(0, conversations.onlineTotal - 1);
            }
        } else {
            conversations.online[user.id] = user;
            if (!wasOnline && conversations.onlineTotal !== null) {
                conversations.onlineTotal++;
            }
        }
        renderBuddies();
        var conv = findConversationWith(user.id);
        if (conv) {
            renderHeader(conv);
        }
    }

    function onRead(event) {
        var conv = conversations.byId[event.conversation];
        if (!conv || isMe(event.user) || !event.message) {
            return;
        }
        setPeerRead(conv, {message: event.message, time: event.time});
        if (conversations.recent) {
            forEach(conversations.recent, function (row) {
                if (sameId(row.id, conv.id)) {
                    row.peer_read = conv.peerRead;
                }
            });
        }
    }

    function setPeerRead(conv, read) {
        if (!read || !read.message) {
            return;
        }
        if (conv.peerRead && Number(conv.peerRead.message) >= Number(read.message)) {
            return; // receipts only move forward
        }
        conv.peerRead = {message: read.message, time: read.time};
        renderSeen(conv);
    }

    function onTyping(event) {
        var conv = conversations.byId[event.conversation];
        if (!conv) {
            return;
        }
        var user = event.user;
        if (isMe(user && typeof user === 'object' ? user.id : user)) {
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
            unreadBase: 0,      // the highest message id that count covers
            peerRead: null,     // {message, time}: how far the peer has read
            items: [],          // [{key, message, el, dayEl}] sorted: by id, then pending ones
            byKey: {},
            hasOlder: true,
            loadingOlder: false,
            typingUntil: 0,
            typingTimer: null,
            lastTypingSent: 0,
            lastSeenSent: 0,
            wantMinimized: null, // what this tab asked for (minimise/restore) until the server answers
            overflowed: false,  // not shown in the dock: listed in the "+N" menu
            dom: null
        };
    }

    // The stored message with the highest id (pending local copies have none), or null.
    function newestMessage(conv) {
        for (var i = conv.items.length - 1; i >= 0; i--) {
            if (hasId(conv.items[i].message)) {
                return conv.items[i].message;
            }
        }
        return null;
    }

    function maxMessageId(conv) {
        var m = newestMessage(conv);
        return m ? Number(m.id) : 0;
    }

    /* Unread = the server's count at the last conversation event, plus the peer's messages after
       the last one it counted (its unread_upto): no message is counted twice or missed when the
       event and a message arrive in either order. */
    function unreadOf(conv) {
        var count = Number(conv.unread) || 0;
        forEach(conv.items, function (item) {
            var m = item.message;
            if (hasId(m) && Number(m.id) > conv.unreadBase && !isMe(m.from)) {
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
        var conv = conversations.byId[data.id];
        if (!data.open) {
            delete conversations.closing[data.id];
            if (conv) {
                removeConversation(data.id);
            }
            return null;
        }
        if (conversations.closing[data.id]) {
            if (!data.messages) {
                // The state from before this tab closed the window (the close's own event comes
                // later): the window stays closed rather than coming back for a moment.
                return null;
            }
            delete conversations.closing[data.id]; // opened again since, with its messages
        }
        var isNew = !conv;
        if (isNew) {
            conv = makeConversation(data);
            conversations.byId[data.id] = conv;
            // On a phone a conversation that opens by itself must not take over the screen.
            var behind = ui.phone && live && currentPhoneConversation() ? 1 : 0;
            conversations.order.splice(behind, 0, data.id);
        }
        if (data['with']) {
            conv.peer = data['with'];
        }
        conv.open = true;
        var minimized = !!data.minimized;
        if (conv.wantMinimized !== null) {
            if (minimized === conv.wantMinimized) {
                conv.wantMinimized = null; // this tab's own change has come back
            } else {
                minimized = conv.wantMinimized; // the state from before it: not undone for a moment
            }
        }
        conv.minimized = minimized;
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
            if (data.messages.length < (Number(ui.settings.history_size) || 10)) {
                conv.hasOlder = false;
            }
        }
        if (has(data, 'peer_read')) {
            if (replaceMessages) {
                conv.peerRead = null;
            }
            setPeerRead(conv, data.peer_read);
        }
        conv.unread = Number(data.unread) || 0;
        // The count covers the peer's messages up to unread_upto, whether or not this client
        // has them yet; those after it (which may have arrived before this event) add to it.
        // A server without the field: the highest id this client knows now.
        conv.unreadBase = has(data, 'unread_upto') ? Number(data.unread_upto) || 0 : maxMessageId(conv);
        var newest = newestMessage(conv);
        if (live && conv.unread > 0 && newest && Number(newest.id) > knownBefore && !isMe(newest.from)) {
            // The peer's message that opened this window (its message event will be a repeat).
            announce(conv, newest);
            noteIncoming(conv);
        }
        renderWindowState(conv);
        renderHeader(conv);
        renderOlderControl(conv);
        updateTitleFlash();
        maybeSeen(conv);
        if (isNew) {
            layout();
        }
        return conv;
    }

    function removeConversation(id) {
        var conv = conversations.byId[id];
        if (!conv) {
            return;
        }
        window.clearTimeout(conv.typingTimer);
        var hadFocus = false;
        if (conv.dom) {
            hadFocus = conv.dom.root.contains(document.activeElement);
            removeNode(conv.dom.root);
        }
        delete conversations.byId[id];
        for (var i = 0; i < conversations.order.length; i++) {
            if (sameId(conversations.order[i], id)) {
                conversations.order.splice(i, 1);
                break;
            }
        }
        updateTitleFlash();
        layout();
        if (hadFocus) {
            focusAfterClose();
        }
    }

    // After a window closes, focus goes to the next window, or back to the panel.
    function focusAfterClose() {
        for (var i = 0; i < conversations.order.length; i++) {
            var conv = conversations.byId[conversations.order[i]];
            if (conv && conv.dom && !conv.overflowed) {
                conv.dom.title.focus();
                return;
            }
        }
        if (ui.panelToggle) {
            ui.panelToggle.focus();
        }
    }

    function findConversationWith(userId) {
        for (var i = 0; i < conversations.order.length; i++) {
            var conv = conversations.byId[conversations.order[i]];
            if (conv && sameId(conv.peer.id, userId)) {
                return conv;
            }
        }
        return null;
    }

    // Bring a conversation next to the panel (out of the overflow menu, if it was there).
    function promote(conv) {
        for (var i = 0; i < conversations.order.length; i++) {
            if (sameId(conversations.order[i], conv.id)) {
                conversations.order.splice(i, 1);
                break;
            }
        }
        conversations.order.unshift(conv.id);
        layout();
    }

    // ------------------------------------------------------------------ messages

    /* Add a message (server copy) or a pending local copy (source 'local').
       Messages are shown sorted by id; pending ones follow at the end in sending order.
       A server copy with a known client_id replaces the pending one. Returns the item. */
    function addMessage(m, source) {
        var conv = conversations.byId[m.conversation];
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
        var item = {key: key, message: m, el: null, dayEl: null, state: source === 'local' ? 'pending' : 'sent'};
        var index = conv.items.length;
        if (source !== 'local') {
            // after the last message with a smaller id; before every pending one
            index = 0;
            for (var i = conv.items.length - 1; i >= 0; i--) {
                var other = conv.items[i].message;
                if (hasId(other) && Number(other.id) < Number(m.id)) {
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
        log.insertBefore(item.el, next ? (next.dayEl || next.el) : null);
        decorate(conv);
        if (index === 0 && conv.items.length > 1 && source === 'history') {
            log.scrollTop = oldTop + (log.scrollHeight - oldHeight); // keep the reader's place
        } else if (stick) {
            log.scrollTop = log.scrollHeight;
        }
        var fromPeer = source !== 'local' && !isMe(m.from);
        if (fromPeer && source === 'event') {
            conv.typingUntil = 0;
            renderTyping(conv);
            announce(conv, m);
            noteIncoming(conv);
            if (!stick && !conv.minimized) {
                show(conv.dom.pill, true); // scrolled up reading: say that something new came
            }
        }
        renderHeader(conv);
        maybeSeen(conv);
        if (conv.overflowed) {
            renderOverflow();
        }
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
        removeNode(item.dayEl);
        decorate(conv);
    }

    function clearMessages(conv) {
        var keep = [];
        forEach(conv.items, function (item) {
            if (item.state === 'sent') {
                removeNode(item.el);
                removeNode(item.dayEl);
                delete conv.byKey[item.key];
            } else {
                keep.push(item);
            }
        });
        conv.items = keep;
        conv.hasOlder = true;
        decorate(conv);
    }

    function nearBottom(node) {
        return node.scrollHeight - node.scrollTop - node.clientHeight < NEAR_BOTTOM_PX;
    }

    function dayKey(time) {
        return new Date(Number(time) || now()).toDateString();
    }

    /* Day separators, grouping of consecutive messages and the "Seen" line, recomputed after
       every change of the list (a few dozen items: cheap). */
    function decorate(conv) {
        var previous = null;
        forEach(conv.items, function (item) {
            var m = item.message;
            var day = dayKey(m.time);
            var newDay = !previous || dayKey(previous.message.time) !== day;
            if (newDay && !item.dayEl) {
                item.dayEl = el('p', {className: 'gchat-day', text: formatDay(new Date(Number(m.time) || now()))});
            }
            if (newDay) {
                if (item.dayEl.nextSibling !== item.el) {
                    conv.dom.log.insertBefore(item.dayEl, item.el);
                }
            } else if (item.dayEl) {
                removeNode(item.dayEl);
                item.dayEl = null;
            }
            var grouped = !newDay && previous && sameId(previous.message.from, m.from) &&
                Math.abs((Number(m.time) || 0) - (Number(previous.message.time) || 0)) < GROUP_GAP_MS;
            toggleClass(item.el, 'gchat-grouped', !!grouped);
            previous = item;
        });
        renderSeen(conv);
    }

    // "Seen 14:02" under the last own message the peer has read.
    function renderSeen(conv) {
        if (!conv.dom) {
            return;
        }
        var read = conv.peerRead;
        var target = null;
        var lastOwn = null;
        forEach(conv.items, function (item) {
            var m = item.message;
            if (hasId(m) && isMe(m.from)) {
                lastOwn = item;
                if (read && Number(m.id) <= Number(read.message)) {
                    target = item;
                }
            }
        });
        // Only under the newest own message: an older one read says nothing new.
        if (!target || target !== lastOwn) {
            removeNode(conv.dom.seen);
            return;
        }
        var date = new Date(Number(read.time) || now());
        setText(conv.dom.seen, t('seen', {time: formatTime(date)}));
        conv.dom.seen.setAttribute('title', formatFull(date));
        var after = target.el.nextSibling;
        if (after !== conv.dom.seen) {
            conv.dom.log.insertBefore(conv.dom.seen, after);
        }
    }

    // ------------------------------------------------------------------ sending

    function saveOutbox() {
        var list = [];
        var pending = conversations.pendingSends;
        for (var id in pending) {
            if (has(pending, id) && !pending[id].permanent) {
                var p = pending[id];
                list.push({conversation: p.conversation, text: p.text, client_id: p.client_id, time: p.time});
            }
        }
        storageSet(STORE_OUTBOX, list.length ? JSON.stringify(list) : null);
    }

    function dropFromOutbox(clientId) {
        if (has(conversations.pendingSends, clientId)) {
            window.clearTimeout(conversations.pendingSends[clientId].retryTimer);
            delete conversations.pendingSends[clientId];
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
            var conv = p && conversations.byId[p.conversation];
            if (!conv || !p.client_id || !p.text || has(conversations.pendingSends, p.client_id)) {
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
        var over = codePoints(text) - maxLength();
        if (over > 0) {
            // Never cut: the text stays in the box and the counter says how much is too much.
            showWindowError(conv, t('error_too_long', {max: maxLength()}));
            return false;
        }
        queueMessage(conv, text, randomId(24), now());
        return true;
    }

    function queueMessage(conv, text, clientId, time) {
        var p = {conversation: conv.id, text: text, client_id: clientId, time: time,
            inflight: false, attempts: 0, retryTimer: null, permanent: false};
        conversations.pendingSends[clientId] = p;
        saveOutbox();
        addMessage({conversation: conv.id, from: conversations.me && conversations.me.id, text: text, time: time,
            client_id: clientId}, 'local');
        transmit(p);
    }

    function transmit(p) {
        if (!has(conversations.pendingSends, p.client_id) || p.inflight) {
            return;
        }
        window.clearTimeout(p.retryTimer);
        p.inflight = true;
        p.attempts++;
        setPendingState(p, 'pending');
        command({type: 'send', conversation: p.conversation, text: p.text, client_id: p.client_id},
            function (reply) {
                p.inflight = false;
                if (!has(conversations.pendingSends, p.client_id)) {
                    return; // the message event already confirmed it
                }
                if (reply.ok && reply.message) {
                    dropFromOutbox(p.client_id);
                    addMessage(reply.message, 'reply');
                    return;
                }
                var code = errorCode(reply) || 'generic';
                var permanent = has(ERRORS, code) && !!ERRORS[code].permanent;
                setPendingState(p, 'failed', permanent ? reply.error : null);
                if (permanent) {
                    p.permanent = true; // stays on screen with Retry, but is not carried to the next page
                    saveOutbox();
                    var conv = conversations.byId[p.conversation];
                    if (conv) {
                        showWindowError(conv, errorText(reply.error));
                    }
                    return;
                }
                // Transient (unavailable, timeout, connection lost, rate limited): retry by itself
                // with the same client_id, so it is stored once whatever happened to the first try.
                p.retryTimer = window.setTimeout(function () {
                    if (transport.conn && info.connected) {
                        transmit(p);
                    }
                }, backoffDelay(p.attempts));
            });
    }

    function retryPendingMessages() {
        var pending = conversations.pendingSends;
        for (var id in pending) {
            if (has(pending, id) && !pending[id].inflight && !pending[id].permanent) {
                transmit(pending[id]);
            }
        }
    }

    function setPendingState(p, state, error) {
        var conv = conversations.byId[p.conversation];
        var item = conv && conv.byKey['c:' + p.client_id];
        if (!item) {
            return;
        }
        item.state = state;
        item.error = error || null;
        renderMessageState(conv, item);
    }

    function retryMessage(conv, item) {
        var p = conversations.pendingSends[item.message.client_id];
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
            promote(conv);
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
                    promote(opened);
                    if (opened.minimized) {
                        setMinimized(opened, false);
                    }
                    focusInput(opened);
                }
            } else {
                showPanelError(errorText(reply.error));
            }
        });
    }

    function setMinimized(conv, minimized) {
        conv.minimized = minimized;
        conv.wantMinimized = minimized;
        renderWindowState(conv);
        command({type: 'minimize', conversation: conv.id, minimized: minimized}, function (reply) {
            if (!reply.ok && conv.wantMinimized === minimized) {
                conv.wantMinimized = null; // refused: no event of it will come
            }
        });
        layout();
        if (!minimized) {
            maybeSeen(conv);
        }
    }

    function closeConversation(conv) {
        conversations.closing[conv.id] = true;
        command({type: 'close', conversation: conv.id}, function (reply) {
            if (!reply.ok) {
                delete conversations.closing[conv.id]; // refused: no event of it will come
            }
        });
        removeConversation(conv.id);
    }

    /* Tell the server the peer's messages were read: only when the window is open, the page is
       visible and has focus, and the user is in this chat window. */
    function maybeSeen(conv) {
        if (!conv || !conv.dom || conv.minimized || conv.overflowed || document.hidden || !document.hasFocus()) {
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
            if (hasId(conv.items[i].message)) {
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
        if (transport.conn && info.connected) {
            command({type: 'typing', conversation: conv.id});
        }
    }

    function loadRecent(more) {
        if (conversations.recentLoading || !info.connected) {
            return;
        }
        var cmd = {type: 'conversations', limit: PAGE_SIZE};
        var list = conversations.recent || [];
        if (more && list.length && list[list.length - 1].last_message) {
            cmd.before = list[list.length - 1].last_message.time;
        }
        conversations.recentLoading = true;
        command(cmd, function (reply) {
            conversations.recentLoading = false;
            if (!reply.ok) {
                showPanelError(errorText(reply.error));
                return;
            }
            conversations.recent = (more ? list : []).concat(reply.conversations || []);
            conversations.recentMore = !!reply.more;
            renderRecent();
        });
    }

    function refreshRecentSoon() {
        if (ui.view !== 'recent' || conversations.recentTimer) {
            return;
        }
        conversations.recentTimer = window.setTimeout(function () {
            conversations.recentTimer = null;
            loadRecent(false);
        }, RECENT_REFRESH_MS);
    }

    function runSearch(more) {
        var query = ui.query;
        if (!query) {
            renderPanelLists();
            return;
        }
        var seq = ++ui.searchSeq;
        var offset = more ? ui.searchOffset : 0;
        command({type: 'search', query: query.slice(0, 100), offset: offset, limit: PAGE_SIZE}, function (reply) {
            if (seq !== ui.searchSeq) {
                return; // a newer search is on its way
            }
            if (!reply.ok) {
                showPanelError(errorText(reply.error));
                return;
            }
            ui.searchOffset = offset + (reply.users || []).length;
            renderSearch(reply.users || [], !!reply.more, more);
        });
    }

    // ------------------------------------------------------------------ UI: root, panel, live region

    function loadCss() {
        var link = document.createElement('link');
        link.rel = 'stylesheet';
        link.href = STATIC_BASE + '/gchat.css';
        var shown = false;
        function reveal() {
            if (!shown && ui.root) {
                shown = true;
                removeClass(ui.root, 'gchat-loading');
                layout();
            }
        }
        on(link, 'load', reveal);
        on(link, 'error', reveal);
        window.setTimeout(reveal, 3000);
        if (ownScript.parentNode) {
            ownScript.parentNode.insertBefore(link, ownScript.nextSibling);
        } else {
            document.getElementsByTagName('head')[0].appendChild(link);
        }
    }

    function containerElement() {
        var selector = ui.settings.container || 'body';
        var node = null;
        try {
            node = document.querySelector(selector);
        } catch (e) {
            node = null;
        }
        return node || document.body;
    }

    function langAttr() {
        return (ui.lang || 'en').replace('_', '-');
    }

    function buildUi() {
        loadCss();
        ui.root = el('div', {id: 'gchat-root', className: 'gchat gchat-loading', 'data-state': info.state,
            lang: langAttr()});
        ui.live = el('div', {className: 'gchat-sr-only', role: 'status', 'aria-live': 'polite',
            'aria-atomic': 'true'});
        ui.dock = el('div', {className: 'gchat-dock'});
        ui.root.appendChild(ui.live);
        ui.root.appendChild(ui.dock);
        buildOverflow();

        ui.banner = el('p', {className: 'gchat-banner gchat-hidden', role: 'status'});
        ui.body = buildPanelBody();
        var block = document.getElementById('gchat-block');
        if (block) {
            // An HTML block in Moodle: the lists live in the page, like the old block did.
            ui.count = el('span', {className: 'gchat-count'});
            ui.blockRoot = el('div', {className: 'gchat gchat-in-block', role: 'region',
                'aria-label': t('title'), lang: langAttr()}, [ui.banner, ui.body]);
            block.appendChild(ui.blockRoot);
        } else {
            ui.count = el('span', {className: 'gchat-count'});
            ui.dot = el('span', {className: 'gchat-dot', 'aria-hidden': 'true'});
            ui.panelToggle = el('button', {type: 'button', className: 'gchat-panel-header',
                'aria-expanded': 'true', 'aria-controls': 'gchat-panel-body', 'aria-keyshortcuts': SHORTCUT},
                [ui.dot, el('span', {className: 'gchat-panel-title', text: t('title')}), ' ', ui.count]);
            ui.panel = el('section', {className: 'gchat-panel', 'aria-label': t('title')},
                [ui.banner, ui.panelToggle, ui.body]);
            on(ui.panelToggle, 'click', function () {
                setPanelCollapsed(!hasClassName(ui.panel, 'gchat-collapsed'));
            });
            ui.dock.appendChild(ui.panel);
            setPanelCollapsed(storageGet(STORE_PANEL) === 'collapsed', true);
        }
        paintPanel();
        containerElement().appendChild(ui.root);
        listenToPage();
        setView(storageGet(STORE_VIEW) === 'recent' ? 'recent' : 'online', true);
        renderCapabilities();
        renderStatus();
        renderPanelLists();
    }

    function buildPanelBody() {
        ui.panelError = el('p', {className: 'gchat-panel-error gchat-hidden', role: 'alert'});
        ui.readOnly = el('p', {className: 'gchat-note gchat-read-only gchat-hidden', text: t('read_only')});
        ui.search = el('input', {type: 'search', className: 'gchat-search', id: 'gchat-search',
            autocomplete: 'off', placeholder: t('search_placeholder'), 'aria-label': t('search_label'),
            'aria-keyshortcuts': SHORTCUT});
        on(ui.search, 'input', function () {
            window.clearTimeout(ui.searchTimer);
            // Emptied: back to the list at once; typed: search after a short pause.
            ui.searchTimer = window.setTimeout(function () {
                ui.query = ui.search.value.replace(/^\s+|\s+$/g, '');
                ui.searchOffset = 0;
                if (!ui.query) {
                    ui.searchSeq++;
                }
                runSearch(false);
                renderPanelLists();
            }, /\S/.test(ui.search.value) ? SEARCH_DELAY_MS : 0);
        });
        on(ui.search, 'keydown', function (event) {
            if (keyOf(event) === 'Escape' && ui.search.value) {
                event.preventDefault();
                event.stopPropagation();
                ui.search.value = '';
                ui.query = '';
                ui.searchSeq++;
                renderPanelLists();
            }
        });
        ui.tabOnline = button('gchat-tab', t('tab_online'), {'aria-pressed': 'true'});
        ui.tabRecent = button('gchat-tab', t('tab_recent'), {'aria-pressed': 'false'});
        on(ui.tabOnline, 'click', function () {
            setView('online');
        });
        on(ui.tabRecent, 'click', function () {
            setView('recent');
        });
        ui.tabs = el('div', {className: 'gchat-tabs', role: 'group', 'aria-label': t('title')},
            [ui.tabOnline, ui.tabRecent]);

        ui.list = el('ul', {className: 'gchat-buddy-list', 'aria-label': t('tab_online')});
        ui.empty = el('p', {className: 'gchat-empty', text: t('no_users')});
        ui.more = el('p', {className: 'gchat-more gchat-hidden'});
        ui.onlineView = el('div', {className: 'gchat-view'}, [ui.list, ui.empty, ui.more]);

        ui.recentList = el('ul', {className: 'gchat-buddy-list', 'aria-label': t('tab_recent')});
        ui.recentEmpty = el('p', {className: 'gchat-none gchat-hidden', text: t('no_recent')});
        ui.recentMoreButton = button('gchat-link gchat-hidden', t('more_results'));
        on(ui.recentMoreButton, 'click', function () {
            loadRecent(true);
        });
        ui.recentView = el('div', {className: 'gchat-view gchat-hidden'},
            [ui.recentList, ui.recentEmpty, ui.recentMoreButton]);

        ui.searchList = el('ul', {className: 'gchat-buddy-list', 'aria-label': t('search_label')});
        ui.searchEmpty = el('p', {className: 'gchat-none gchat-hidden', role: 'status'});
        ui.searchMoreButton = button('gchat-link gchat-hidden', t('more_results'));
        on(ui.searchMoreButton, 'click', function () {
            runSearch(true);
        });
        ui.searchView = el('div', {className: 'gchat-view gchat-hidden'},
            [ui.searchList, ui.searchEmpty, ui.searchMoreButton]);

        return el('div', {className: 'gchat-panel-body', id: 'gchat-panel-body'},
            [ui.panelError, ui.readOnly, ui.search, ui.tabs, ui.onlineView, ui.recentView, ui.searchView]);
    }

    function buildOverflow() {
        ui.overflowButton = el('button', {type: 'button', className: 'gchat-overflow-button',
            'aria-haspopup': 'true', 'aria-expanded': 'false', 'aria-controls': 'gchat-overflow-menu'});
        ui.overflowMenu = el('ul', {className: 'gchat-overflow-menu gchat-hidden', id: 'gchat-overflow-menu'});
        ui.overflow = el('div', {className: 'gchat-overflow gchat-hidden'}, [ui.overflowMenu, ui.overflowButton]);
        on(ui.overflowButton, 'click', function () {
            setOverflowOpen(hasClassName(ui.overflowMenu, 'gchat-hidden'));
        });
        on(ui.overflow, 'keydown', function (event) {
            if (keyOf(event) === 'Escape') {
                event.preventDefault();
                event.stopPropagation();
                setOverflowOpen(false);
                ui.overflowButton.focus();
            }
        });
        ui.dock.appendChild(ui.overflow);
    }

    function setOverflowOpen(open) {
        show(ui.overflowMenu, open);
        ui.overflowButton.setAttribute('aria-expanded', open ? 'true' : 'false');
        if (open) {
            var first = ui.overflowMenu.getElementsByTagName('button')[0];
            if (first) {
                first.focus();
            }
        }
    }

    function listenToPage() {
        on(document, 'visibilitychange', onVisibility);
        on(window, 'focus', onVisibility);
        on(window, 'pagehide', function () {
            connection.unloading = true;
        });
        on(window, 'pageshow', function (event) {
            if (event.persisted && connection.unloading) {
                // restored from the back/forward cache: the old connection is gone
                connection.unloading = false;
                connection.reconnectAttempt = 0;
                connect();
            }
        });
        on(window, 'offline', function () {
            // The browser knows the network is gone: do not wait for TCP to find out.
            if (transport.conn && !connection.ended) {
                var kind = transport.conn.kind;
                disconnect();
                transportDown(kind, false, 'offline');
            }
        });
        on(window, 'online', function () {
            if (connection.reconnectTimer) {
                connection.reconnectAttempt = 0;
                connect();
            }
        });
        on(window, 'resize', function () {
            window.clearTimeout(ui.resizeTimer);
            ui.resizeTimer = window.setTimeout(layout, RESIZE_DELAY_MS);
        });
        on(document, 'keydown', onShortcut);
        on(document, 'mousedown', function (event) {
            if (ui.overflow && !ui.overflow.contains(event.target)) {
                setOverflowOpen(false);
            }
        });
    }

    // Alt+Shift+C: to the open conversation's input, else to the panel's search field.
    function onShortcut(event) {
        var key = String(event.key || '').toLowerCase();
        if (!event.altKey || !event.shiftKey || event.ctrlKey || event.metaKey ||
                (key !== 'c' && event.keyCode !== 67)) {
            return;
        }
        event.preventDefault();
        for (var i = 0; i < conversations.order.length; i++) {
            var conv = conversations.byId[conversations.order[i]];
            if (conv && conv.dom && !conv.minimized && !conv.overflowed) {
                if (conv.dom.input && !conv.dom.input.disabled && connection.canSend) {
                    conv.dom.input.focus();
                } else {
                    conv.dom.log.focus();
                }
                return;
            }
        }
        if (ui.panel) {
            setPanelCollapsed(false);
        }
        if (ui.search && !hasClassName(ui.search, 'gchat-hidden')) {
            ui.search.focus();
        } else if (ui.panelToggle) {
            ui.panelToggle.focus();
        }
    }

    function setPanelCollapsed(collapsed, initial) {
        if (!ui.panel) {
            return;
        }
        toggleClass(ui.panel, 'gchat-collapsed', collapsed);
        ui.panelToggle.setAttribute('aria-expanded', collapsed ? 'false' : 'true');
        ui.panelToggle.setAttribute('title', (collapsed ? t('show_list') : t('hide_list')) +
            ' (' + SHORTCUT + ')');
        if (!initial) {
            storageSet(STORE_PANEL, collapsed ? 'collapsed' : 'open');
            layout();
        }
    }

    function setView(view, initial) {
        ui.view = view;
        ui.tabOnline.setAttribute('aria-pressed', view === 'online' ? 'true' : 'false');
        ui.tabRecent.setAttribute('aria-pressed', view === 'recent' ? 'true' : 'false');
        if (!initial) {
            storageSet(STORE_VIEW, view);
        }
        if (view === 'recent' && conversations.recent === null) {
            loadRecent(false);
        }
        renderPanelLists();
    }

    function paintPanel() {
        if (ui.panelToggle) {
            ui.panelToggle.style.backgroundColor = color('header');
            ui.panelToggle.style.color = color('header_text');
            ui.panel.style.borderColor = color('border');
        }
    }

    // The banner: visible even with the panel collapsed, for every state that is not plain chat.
    function renderStatus() {
        if (!ui.banner) {
            return;
        }
        var state = connection.state;
        var text = state === 'reconnecting' ? t('reconnecting') : state === 'connecting' ? t('connecting') :
            state === 'ended' ? t('logged_out') : state === 'disabled' ? t('messaging_disabled') : '';
        setText(ui.banner, text);
        show(ui.banner, !!text);
        toggleClass(ui.banner, 'gchat-banner-final', state === 'ended' || state === 'disabled');
        var lost = state !== 'connected';
        toggleClass(ui.root, 'gchat-offline', lost);
        if (ui.blockRoot) {
            toggleClass(ui.blockRoot, 'gchat-offline', lost);
        }
        show(ui.search, state !== 'ended' && state !== 'disabled');
        // Presence is unknown while disconnected: every name in every list says so.
        renderPanelLists();
        if (ui.query && ui.searchResults.length) {
            renderSearch(ui.searchResults, ui.searchMore, false);
        }
        renderAllHeaders();
        if (state === 'connected' && ui.view === 'recent' && conversations.recent === null) {
            loadRecent(false);
        }
    }

    function renderCapabilities() {
        if (ui.readOnly) {
            show(ui.readOnly, !connection.canSend);
        }
        forEach(conversations.order, function (id) {
            var conv = conversations.byId[id];
            if (conv && conv.dom) {
                renderComposer(conv);
            }
        });
    }

    function renderPanelLists() {
        if (!ui.onlineView) {
            return;
        }
        var usable = connection.state !== 'ended' && connection.state !== 'disabled';
        var searching = !!ui.query && usable;
        show(ui.tabs, usable && !searching); // search results replace both lists while there is a query
        show(ui.onlineView, usable && !searching && ui.view === 'online');
        show(ui.recentView, usable && !searching && ui.view === 'recent');
        show(ui.searchView, searching);
        renderBuddies();
        renderRecent();
        renderUnreadCount();
    }

    function sortedOnline() {
        var users = [];
        var online = conversations.online;
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
        return users;
    }

    /* A person in a list: avatar, name, presence (also in the accessible name), an optional
       second line and an unread badge. */
    function personButton(user, presence, detail, unread, kind) {
        var parts = [avatar(user, 32, presence)];
        var label = t('name_' + presence, {name: user.name});
        var text = el('span', {className: 'gchat-person-text'},
            [el('span', {className: kind ? 'gchat-person-name' : 'gchat-buddy-name', text: user.name})]);
        if (detail) {
            text.appendChild(el('span', {className: 'gchat-detail', text: detail}));
            label += '. ' + detail;
        }
        parts.push(text);
        if (unread) {
            parts.push(el('span', {className: 'gchat-badge', 'aria-hidden': 'true', text: String(unread)}));
            label += '. ' + t('unread', {count: unread});
        }
        var node = el('button', {type: 'button', className: (kind ? 'gchat-person gchat-' + kind :
            'gchat-buddy') + ' gchat-' + presence,
            'data-user-id': user.id, 'aria-label': label, title: t('open_chat_with', {name: user.name})}, parts);
        on(node, 'click', function () {
            openWith(user);
        });
        return node;
    }

    function fillList(list, users, make) {
        var focusedId = null;
        if (list.contains(document.activeElement)) {
            focusedId = document.activeElement.getAttribute('data-user-id');
        }
        empty(list);
        forEach(users, function (user, i) {
            var node = make(user, i);
            list.appendChild(el('li', null, [node]));
            if (focusedId !== null && sameId(focusedId, user.id)) {
                node.focus();
            }
        });
    }

    function renderBuddies() {
        if (!ui.list) {
            return;
        }
        var users = sortedOnline();
        var unknown = connection.state !== 'connected';
        fillList(ui.list, users, function (user) {
            return personButton(user, unknown ? 'unknown' : 'online');
        });
        var text = t('no_users') + ' ' + t('no_users_hint');
        if (conversations.coursemates === 0) {
            text = t('no_coursemates');
        }
        setText(ui.empty, text);
        show(ui.empty, !users.length && connection.seenReady);
        var total = conversations.onlineTotal;
        var hidden = total !== null && total > users.length ? total - users.length : 0;
        setText(ui.more, hidden ? t('more_online', {count: hidden}) : '');
        show(ui.more, hidden > 0);
        var count = total !== null ? Math.max(total, users.length) : users.length;
        setText(ui.count, count && !unknown ? '(' + count + ')' : '');
        if (ui.panelToggle) {
            ui.panelToggle.setAttribute('aria-label', t('title') + (count && !unknown ? ', ' +
                t('online_count', {count: count}) : '') + (ui.banner && ui.banner.textContent ?
                '. ' + ui.banner.textContent : ''));
        }
    }

    function renderRecent() {
        if (!ui.recentList) {
            return;
        }
        var rows = conversations.recent || [];
        var unknown = connection.state !== 'connected';
        fillList(ui.recentList, rows, function (row) {
            var user = row['with'] || {};
            var last = row.last_message;
            var conv = conversations.byId[row.id];
            var unread = conv ? unreadOf(conv) : Number(row.unread) || 0;
            var detail = '';
            if (last) {
                detail = (isMe(last.from) ? t('you') + ': ' : '') + String(last.text).replace(/\s+/g, ' ');
                if (detail.length > 60) {
                    detail = detail.slice(0, 59) + '…';
                }
            }
            var node = personButton({id: user.id, name: user.name, picture: user.picture},
                unknown ? 'unknown' : presenceOf(user.id), detail, unread, 'recent-item');
            return node;
        });
        show(ui.recentEmpty, conversations.recent !== null && !rows.length);
        show(ui.recentMoreButton, conversations.recentMore);
    }

    function renderSearch(users, more, append) {
        ui.searchResults = (append ? ui.searchResults : []).concat(users);
        ui.searchMore = more;
        if (!append) {
            empty(ui.searchList);
        }
        forEach(users, function (user) {
            var presence = connection.state !== 'connected' ? 'unknown' : (user.online ? 'online' : 'offline');
            ui.searchList.appendChild(el('li', null, [personButton(user, presence,
                presence === 'offline' ? t('offline_hint') : '', 0, 'search-item')]));
        });
        var none = !append && !users.length;
        setText(ui.searchEmpty, none ? t('search_none', {query: ui.query}) : '');
        show(ui.searchEmpty, none);
        show(ui.searchMoreButton, more);
    }

    function renderUnreadCount() {
        // The recent tab says how many conversations have unread messages.
        if (!ui.tabRecent) {
            return;
        }
        var total = totalUnread();
        setText(ui.tabRecent, total ? t('tab_recent') + ' (' + total + ')' : t('tab_recent'));
    }

    function avatar(user, size, presence) {
        var url = safeImageUrl(user.picture);
        var initials = el('span', {className: 'gchat-initials', text: String(user.name || '?').charAt(0).toUpperCase()});
        var image = initials;
        if (url) {
            image = el('img', {className: 'gchat-avatar', src: url, alt: '', width: size, height: size});
            on(image, 'error', function () {
                if (image.parentNode) {
                    image.parentNode.replaceChild(initials, image);
                }
            });
        }
        var children = [image];
        if (presence) {
            children.push(el('span', {className: 'gchat-presence-dot gchat-' + presence}));
        }
        return el('span', {className: 'gchat-face', 'aria-hidden': 'true'}, children);
    }

    function showPanelError(text) {
        if (ui.live) {
            setText(ui.live, text);
        }
        if (ui.panelError) {
            setText(ui.panelError, text);
            show(ui.panelError, !!text);
            setPanelCollapsed(false);
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

    // ------------------------------------------------------------------ UI: layout of the dock

    function currentPhoneConversation() {
        for (var i = 0; i < conversations.order.length; i++) {
            var conv = conversations.byId[conversations.order[i]];
            if (conv && !conv.minimized) {
                return conv;
            }
        }
        return null;
    }

    /* As many windows as fit next to the panel, most recently used first; the rest go into the
       "+N" menu. On a phone one conversation at a time, full screen. Runs on every change and
       on resize, so no window is ever off screen. */
    function layout() {
        if (!ui.dock || !ui.root) {
            return;
        }
        var width = window.innerWidth || document.documentElement.clientWidth;
        ui.phone = width <= PHONE_MAX_WIDTH;
        toggleClass(ui.root, 'gchat-phone', ui.phone);
        var order = conversations.order;
        var shown = {};
        var hidden = [];
        if (ui.phone) {
            var current = currentPhoneConversation();
            if (current) {
                shown[current.id] = true;
            }
        } else {
            var panelWidth = ui.panel ? ui.panel.offsetWidth + DOCK.gap : 0;
            var room = width - DOCK.padding - panelWidth;
            var need = 0;
            forEach(order, function (id) {
                var conv = conversations.byId[id];
                need += (conv && conv.minimized ? DOCK.minimized : DOCK.window) + DOCK.gap;
            });
            if (need > room) {
                room -= DOCK.overflow + DOCK.gap; // the "+N" button takes a place too
            }
            var used = 0;
            var full = false;
            forEach(order, function (id, i) {
                var conv = conversations.byId[id];
                var w = (conv && conv.minimized ? DOCK.minimized : DOCK.window) + DOCK.gap;
                // In order of use: once one does not fit, the older ones go to the menu too.
                // The most recent one is always shown, even on a narrow screen.
                full = full || (i > 0 && used + w > room);
                if (!full) {
                    shown[id] = true;
                    used += w;
                }
            });
        }
        forEach(order, function (id) {
            var conv = conversations.byId[id];
            if (!conv || !conv.dom) {
                return;
            }
            conv.overflowed = !shown[id];
            if (conv.overflowed) {
                hidden.push(conv);
            }
            toggleClass(conv.dom.root, 'gchat-overflowed', conv.overflowed);
        });
        // DOM (tab) order = visual order: the "+N" button, windows from left to right, the panel.
        var focused = document.activeElement;
        var anchor = ui.panel || null;
        for (var i = 0; i < order.length; i++) {
            var conv = conversations.byId[order[i]];
            if (conv && conv.dom) {
                if (conv.dom.root.nextSibling !== anchor || conv.dom.root.parentNode !== ui.dock) {
                    ui.dock.insertBefore(conv.dom.root, anchor);
                }
                anchor = conv.dom.root;
            }
        }
        if (ui.overflow.nextSibling !== anchor) {
            ui.dock.insertBefore(ui.overflow, anchor);
        }
        if (focused && focused !== document.activeElement && ui.root.contains(focused)) {
            focused.focus(); // moving a node blurs it
        }
        var phoneConv = ui.phone && currentPhoneConversation();
        toggleClass(ui.root, 'gchat-conversation-open', !!phoneConv);
        conversations.overflowList = hidden;
        renderOverflow();
    }

    function renderOverflow() {
        if (!ui.overflow) {
            return;
        }
        var hidden = conversations.overflowList || [];
        show(ui.overflow, hidden.length > 0);
        if (!hidden.length) {
            show(ui.overflowMenu, false);
            ui.overflowButton.setAttribute('aria-expanded', 'false');
        }
        var unreadTotal = 0;
        empty(ui.overflowMenu);
        forEach(hidden, function (conv) {
            var unread = unreadOf(conv);
            unreadTotal += unread;
            var presence = presenceOf(conv.peer.id);
            var label = t('name_' + presence, {name: conv.peer.name}) + (unread ? '. ' + t('unread', {count: unread}) : '');
            var item = el('button', {type: 'button', className: 'gchat-overflow-item', 'aria-label': label,
                'data-conversation': conv.id}, [avatar(conv.peer, 24, presence),
                el('span', {className: 'gchat-person-name', text: conv.peer.name}),
                unread ? el('span', {className: 'gchat-badge', 'aria-hidden': 'true', text: String(unread)}) : null]);
            on(item, 'click', function () {
                setOverflowOpen(false);
                promote(conv);
                if (conv.minimized) {
                    setMinimized(conv, false);
                }
                focusInput(conv);
            });
            ui.overflowMenu.appendChild(el('li', null, [item]));
        });
        empty(ui.overflowButton);
        ui.overflowButton.appendChild(el('span', {'aria-hidden': 'true', text: '+' + hidden.length}));
        if (unreadTotal) {
            ui.overflowButton.appendChild(el('span', {className: 'gchat-badge', 'aria-hidden': 'true',
                text: String(unreadTotal)}));
        }
        var label = t('more_chats', {count: hidden.length}) + (unreadTotal ? '. ' + t('unread', {count: unreadTotal}) : '');
        ui.overflowButton.setAttribute('aria-label', label);
        ui.overflowButton.setAttribute('title', label);
        toggleClass(ui.overflowButton, 'gchat-unread', unreadTotal > 0);
    }

    // ------------------------------------------------------------------ UI: chat windows

    function buildWindow(conv) {
        var peerName = conv.peer.name || '';
        var dom = {};
        var baseId = 'gchat-conv-' + String(conv.id).replace(/[^\w-]/g, '');
        dom.back = el('button', {type: 'button', className: 'gchat-win-back', 'aria-label': t('back'),
            title: t('back')}, [el('span', {'aria-hidden': 'true', text: '\u2190'})]);
        dom.title = el('button', {type: 'button', className: 'gchat-win-title', 'aria-expanded': 'true',
            'aria-controls': baseId + '-body'});
        dom.titleName = el('span', {className: 'gchat-win-name', text: peerName});
        dom.presence = el('span', {className: 'gchat-presence', 'aria-hidden': 'true'});
        dom.presenceText = el('span', {className: 'gchat-sr-only'});
        dom.badge = el('span', {className: 'gchat-badge', 'aria-hidden': 'true'});
        dom.badgeText = el('span', {className: 'gchat-sr-only'});
        dom.title.appendChild(dom.presence);
        dom.title.appendChild(dom.titleName);
        dom.title.appendChild(dom.presenceText);
        dom.title.appendChild(dom.badge);
        dom.title.appendChild(dom.badgeText);
        dom.minimise = el('button', {type: 'button', className: 'gchat-win-min'},
            [el('span', {'aria-hidden': 'true', text: '\u2013'})]);
        dom.close = el('button', {type: 'button', className: 'gchat-win-close',
            'aria-label': t('close'), title: t('close')}, [el('span', {'aria-hidden': 'true', text: '\u00d7'})]);
        dom.header = el('div', {className: 'gchat-win-header'}, [dom.back, dom.title, dom.minimise, dom.close]);

        dom.older = button('gchat-older', t('load_older'));
        dom.olderNote = el('p', {className: 'gchat-older-note', text: t('start_of_conversation', {name: peerName})});
        dom.log = el('div', {className: 'gchat-log', role: 'log', 'aria-live': 'polite',
            'aria-label': t('messages', {name: peerName}), tabindex: '0'});
        dom.top = el('div', {className: 'gchat-log-top'}, [dom.older, dom.olderNote]);
        dom.log.appendChild(dom.top);
        dom.seen = el('p', {className: 'gchat-seen'});
        dom.pill = button('gchat-pill gchat-hidden', t('new_messages') + ' \u2193');
        dom.typing = el('div', {className: 'gchat-typing', 'aria-hidden': 'true'});
        dom.note = el('p', {className: 'gchat-note gchat-offline-note gchat-hidden'});
        dom.error = el('div', {className: 'gchat-win-error', role: 'alert'});
        dom.counter = el('span', {className: 'gchat-counter gchat-hidden', id: baseId + '-counter'});
        dom.input = el('textarea', {className: 'gchat-input', rows: '1', placeholder: t('placeholder'),
            'aria-label': t('message_label', {name: peerName}), 'aria-describedby': baseId + '-counter'});
        dom.send = el('button', {type: 'submit', className: 'gchat-send', text: t('send')});
        dom.form = el('form', {className: 'gchat-form'}, [dom.input, dom.send]);
        dom.readOnly = el('p', {className: 'gchat-note gchat-read-only gchat-hidden', text: t('read_only')});
        dom.body = el('div', {className: 'gchat-win-body', id: baseId + '-body'},
            [dom.log, dom.pill, dom.typing, dom.note, dom.error, dom.counter, dom.form, dom.readOnly]);
        dom.root = el('section', {className: 'gchat-win', role: 'dialog', 'aria-modal': 'false',
            'data-conversation': conv.id, 'data-peer': conv.peer.id}, [dom.header, dom.body]);
        conv.dom = dom;
        ui.dock.insertBefore(dom.root, ui.panel || null);

        on(dom.title, 'click', function () {
            setMinimized(conv, !conv.minimized);
            if (!conv.minimized) {
                focusInput(conv);
            }
        });
        on(dom.minimise, 'click', function () {
            setMinimized(conv, !conv.minimized);
        });
        on(dom.back, 'click', function () {
            // Phone: back to the list; the conversation stays (minimised) in the "+N" menu.
            setMinimized(conv, true);
            setPanelCollapsed(false);
            if (ui.panelToggle) {
                ui.panelToggle.focus();
            }
        });
        on(dom.close, 'click', function () {
            closeConversation(conv);
        });
        on(dom.older, 'click', function () {
            loadOlder(conv);
        });
        on(dom.pill, 'click', function () {
            dom.log.scrollTop = dom.log.scrollHeight;
            show(dom.pill, false);
            dom.log.focus();
        });
        on(dom.log, 'scroll', function () {
            if (dom.log.scrollTop < 30) {
                loadOlder(conv);
            }
            if (nearBottom(dom.log)) {
                show(dom.pill, false);
            }
        });
        on(dom.log, 'keydown', function (event) {
            moveInLog(conv, event);
        });
        on(dom.form, 'submit', function (event) {
            event.preventDefault();
            submit(conv);
        });
        on(dom.input, 'keydown', function (event) {
            if (keyOf(event) === 'Enter' && !event.shiftKey && !event.isComposing) {
                event.preventDefault();
                submit(conv);
            }
        });
        on(dom.input, 'input', function () {
            clearWindowError(conv);
            autoGrow(dom.input);
            renderCounter(conv);
            if (dom.input.value) {
                noteTyping(conv);
            }
        });
        on(dom.root, 'keydown', function (event) {
            if (keyOf(event) === 'Escape') {
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
        renderComposer(conv);
    }

    // Up/Down in the log move between messages; a focused message shows its full date.
    function moveInLog(conv, event) {
        var key = keyOf(event);
        if (key !== 'ArrowUp' && key !== 'ArrowDown') {
            return;
        }
        var items = conv.items;
        if (!items.length) {
            return;
        }
        var index = -1;
        for (var i = 0; i < items.length; i++) {
            if (items[i].el === document.activeElement) {
                index = i;
            }
        }
        var next = index < 0 ? items.length - 1 : index + (key === 'ArrowUp' ? -1 : 1);
        if (next >= 0 && next < items.length) {
            event.preventDefault();
            items[next].el.focus();
        }
    }

    function submit(conv) {
        var input = conv.dom.input;
        if (sendText(conv, input.value)) {
            input.value = '';
            autoGrow(input);
            renderCounter(conv);
            conv.lastTypingSent = 0;
        }
        input.focus();
    }

    function autoGrow(textarea) {
        textarea.style.height = 'auto';
        textarea.style.height = Math.min(textarea.scrollHeight, 96) + 'px';
    }

    // The counter appears near the limit and says how much is left, or how much is too much.
    function renderCounter(conv) {
        var dom = conv.dom;
        var max = maxLength();
        var used = codePoints(dom.input.value);
        var visible = used >= max * COUNTER_FROM;
        var over = used - max;
        setText(dom.counter, over > 0 ? t('chars_over', {count: over}) : t('chars_left', {count: max - used}));
        show(dom.counter, visible);
        toggleClass(dom.counter, 'gchat-over', over > 0);
        dom.input.setAttribute('aria-invalid', over > 0 ? 'true' : 'false');
    }

    function focusInput(conv) {
        if (conv.dom && !conv.minimized) {
            if (connection.canSend) {
                conv.dom.input.focus();
            } else {
                conv.dom.log.focus();
            }
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

    function renderComposer(conv) {
        show(conv.dom.form, connection.canSend);
        show(conv.dom.readOnly, !connection.canSend);
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
            show(dom.pill, false);
        }
    }

    function renderAllHeaders() {
        forEach(conversations.order, function (id) {
            renderHeader(conversations.byId[id]);
        });
        renderOverflow();
    }

    function renderHeader(conv) {
        var dom = conv && conv.dom;
        if (!dom) {
            return;
        }
        var unread = unreadOf(conv);
        var presence = presenceOf(conv.peer.id);
        var name = conv.peer.name || '';
        setText(dom.titleName, name);
        setText(dom.presenceText, ', ' + presenceText(presence));
        setText(dom.badge, unread ? String(unread) : '');
        setText(dom.badgeText, unread ? ', ' + t('unread', {count: unread}) : '');
        show(dom.badge, unread > 0);
        dom.root.setAttribute('data-unread', String(unread));
        dom.root.setAttribute('aria-label', t('chat_with', {name: name}) + ', ' + presenceText(presence));
        toggleClass(dom.root, 'gchat-unread', unread > 0);
        dom.header.style.backgroundColor = unread ? color('header_unread') : color('header');
        dom.header.style.color = color('header_text');
        dom.root.style.borderColor = color('border');
        dom.presence.className = 'gchat-presence gchat-' + presence;
        dom.presence.setAttribute('title', presenceText(presence));
        // Writing to someone who is offline works: say that they will read it later.
        var offline = presence === 'offline' && connection.canSend;
        setText(dom.note, offline ? t('offline_note', {name: name}) : '');
        show(dom.note, offline);
        renderUnreadCount();
    }

    function renderOlderControl(conv) {
        var dom = conv.dom;
        if (!dom) {
            return;
        }
        var hasIds = false;
        forEach(conv.items, function (item) {
            if (hasId(item.message)) {
                hasIds = true;
            }
        });
        show(dom.older, conv.hasOlder && hasIds);
        // "This is the start of your conversation": also in a conversation with no message yet.
        show(dom.olderNote, !conv.hasOlder || !hasIds);
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
        var mine = isMe(m.from);
        var bubble = el('div', {className: 'gchat-text'});
        appendLinkified(bubble, String(m.text === undefined ? '' : m.text));
        var date = new Date(Number(m.time) || now());
        var full = formatFull(date);
        var time = el('time', {className: 'gchat-time', title: full,
            datetime: date.toISOString ? date.toISOString() : null}, [formatTime(date)]);
        var fullDate = el('span', {className: 'gchat-fulldate', 'aria-hidden': 'true', text: full});
        var state = el('span', {className: 'gchat-state'});
        var meta = el('div', {className: 'gchat-meta'}, [time, state]);
        var who = el('span', {className: 'gchat-sr-only', text: (mine ? t('you') : (conv.peer.name || '')) + ': '});
        var content = el('div', {className: 'gchat-content'}, [who, bubble, meta, fullDate]);
        var node = el('div', {className: 'gchat-msg ' + (mine ? 'gchat-mine' : 'gchat-theirs'), tabindex: '-1',
            'data-id': hasId(m) ? m.id : null, 'data-client-id': m.client_id || null},
            [mine ? null : avatar(conv.peer, 28), content]);
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
        empty(state);
        if (item.state === 'pending') {
            state.appendChild(document.createTextNode(' \u00b7 ' + t('pending')));
        } else if (item.state === 'failed') {
            var reason = item.error ? errorText(item.error) : '';
            state.appendChild(document.createTextNode(' \u00b7 ' + t('failed') + (reason ? ' ' + reason : '') + ' '));
            var retry = button('gchat-retry', t('retry'));
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
        return pad(date.getHours()) + ':' + pad(date.getMinutes());
    }

    function formatDate(date, options) {
        try {
            return date.toLocaleDateString(langAttr(), options);
        } catch (e) {
            return date.getFullYear() + '-' + pad(date.getMonth() + 1) + '-' + pad(date.getDate());
        }
    }

    function formatDay(date) {
        var today = new Date();
        if (date.toDateString() === today.toDateString()) {
            return t('today');
        }
        if (date.toDateString() === new Date(today.getTime() - 86400000).toDateString()) {
            return t('yesterday');
        }
        return formatDate(date, {weekday: 'long', year: 'numeric', month: 'long', day: 'numeric'});
    }

    function formatFull(date) {
        return formatDate(date, {weekday: 'long', year: 'numeric', month: 'long', day: 'numeric'}) +
            ' ' + formatTime(date);
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

    function pageAway() {
        return document.hidden || !document.hasFocus();
    }

    function noteIncoming(conv) {
        if (pageAway()) {
            ui.flashFrom = conv;
            updateTitleFlash();
        }
    }

    function totalUnread() {
        var total = 0;
        forEach(conversations.order, function (id) {
            if (conversations.byId[id]) {
                total += unreadOf(conversations.byId[id]);
            }
        });
        return total;
    }

    function updateTitleFlash() {
        var total = totalUnread();
        if (!ui.flashFrom || !pageAway() || !total) {
            stopTitleFlash();
            return;
        }
        if (ui.flashTimer) {
            return;
        }
        ui.pageTitle = document.title;
        ui.flashTimer = window.setInterval(function () {
            ui.flashOn = !ui.flashOn;
            var name = ui.flashFrom && ui.flashFrom.peer ? ui.flashFrom.peer.name : '';
            document.title = ui.flashOn ? t('title_flash', {count: totalUnread(), name: name}) : ui.pageTitle;
        }, TITLE_FLASH_MS);
    }

    function stopTitleFlash() {
        if (ui.flashTimer) {
            window.clearInterval(ui.flashTimer);
            ui.flashTimer = null;
            document.title = ui.pageTitle;
        }
        ui.flashOn = false;
    }

    function onVisibility() {
        if (!pageAway()) {
            ui.flashFrom = null;
            stopTitleFlash();
            forEach(conversations.order, function (id) {
                maybeSeen(conversations.byId[id]);
            });
            if (connection.reconnectTimer && !document.hidden) {
                // back in front of the user: do not make them wait for the backoff
                window.clearTimeout(connection.reconnectTimer);
                connection.reconnectTimer = null;
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
