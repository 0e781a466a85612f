<?php
// Moodle sessions written by real PHP, for gchat's tests (gchat only reads them).
//
// PHP's own session module encodes $_SESSION (session.serialize_handler = php, as
// \core\session\manager::prepare_cookies sets it) and hands the string to a save handler:
//   database  base64_encode() of it, as lib/classes/session/database.php's handler_write stores
//             it in {sessions}.sessdata (printed; the test inserts it into the row);
//   files     PHP's own "files" handler, which writes <dir>/sess_<sid>;
//   redis     a handler keeping the records the way Moodle 4.5+'s public/lib/classes/session/
//             redis.php does: phpredis with OPT_SERIALIZER (php or igbinary) and OPT_PREFIX, the
//             hash session_<sid> (id, state, sid, userid, sessdata, timecreated, timemodified,
//             firstip, lastip) and the hash user_<userid> (sid => time), sessdata compressed with
//             gzencode() or zstd_compress() first, keys expiring after sessiontimeout + 20 + 60 s
//             (guest: 5 x sessiontimeout; not logged in, first access: 180 s).
//
// Usage: php moodle_session.php < request.json; prints one JSON object. See tests/php_moodle.py.

declare(strict_types=1);

namespace core\context {
    // A stand-in for Moodle's context classes, so that $USER->loginascontext is serialized
    // as Moodle's is: an object of a namespaced class with protected properties.
    class system {
        protected $_id = 1;
        protected $_contextlevel = 10;
        protected $_instanceid = 0;
        protected $_path = '/1';
        protected $_depth = 1;
        protected $_locked = 0;
    }
}

namespace {

const UPDATE_FREQUENCY = 20;  // $CFG->session_update_timemodified_frequency default
const FIRST_ACCESS_TIMEOUT = 180;

function fail(string $message): void {
    fwrite(STDERR, $message . "\n");
    exit(1);
}

/** A $USER as get_complete_user_data() builds it (the fields a session carries). */
function moodle_user(array $spec, int $now): stdClass {
    $user = new stdClass();
    $user->id = (string) $spec['id'];  // database rows come back as strings
    $user->auth = $spec['auth'] ?? 'manual';
    $user->confirmed = '1';
    $user->policyagreed = '0';
    $user->deleted = '0';
    $user->suspended = '0';
    $user->mnethostid = '1';
    $user->username = $spec['username'] ?? ('user' . $spec['id']);
    $user->idnumber = '';
    $user->firstname = $spec['firstname'] ?? 'Zoë';
    $user->lastname = $spec['lastname'] ?? "O'Connor";
    $user->email = 'u' . $spec['id'] . '@example.invalid';
    $user->lang = 'en';
    $user->timezone = '99';
    $user->firstaccess = (string) ($now - 86400);
    $user->lastaccess = (string) $now;
    $user->lastlogin = (string) ($now - 3600);
    $user->currentlogin = (string) $now;
    $user->lastip = '127.0.0.1';
    $user->picture = '0';
    $user->timecreated = (string) ($now - 86400 * 30);
    $user->preference = ['email_bounce_count' => '1', '_lastloaded' => $now, 'drawer-open-nav' => 'true'];
    $user->profile = [];
    $user->enrol = ['enrolled' => [2 => 2147483647, 3 => $now + 86400], 'tempguest' => []];
    $user->access = [
        'ra' => ['/1' => [7 => 7], '/1/3/25' => [5 => 5]],
        'time' => $now,
        'rsw' => [],
    ];
    $user->sesskey = 'AbCdEf1234';
    $user->ajax_updatable_user_prefs = ['drawer-open-nav' => 'alpha'];
    $user->gradeediting = [];
    return $user;
}

/** A $SESSION with what real pages leave in it: caches, floats, a shared object, a reference. */
function moodle_session(array $spec, int $now): stdClass {
    $session = new stdClass();
    $session->isnewsessioncookie = false;
    $session->lang = 'en';
    $session->wantsurl = 'https://moodle.example/course/view.php?id=2';
    $navigation = new stdClass();
    $navigation->expires = $now + 1800;
    $navigation->nodes = ['home' => 1, 'mycourses' => [2, 3]];
    $session->navcache = $navigation;
    $session->navcache_copy = $navigation;  // the same object twice: r: in PHP's format
    $session->load_navigation_admin = 1;
    $session->fontsize = 0.1 + 0.2;        // serialize_precision -1: 0.30000000000000004
    $session->huge = 1.0e25;
    $session->cachestore_session = ['default_session-core/navigation_cache' => ['__lastaccess__u2' => [$now, $now]]];
    $counter = 3;
    $session->counter = &$counter;          // a PHP reference: R: in PHP's format
    $session->counter_alias = &$counter;
    if (array_key_exists('mfa', $spec) && $spec['mfa'] !== null) {
        $session->tool_mfa_authenticated = $spec['mfa'];
    }
    if (!empty($spec['mfa_pending'])) {
        $session->mfa_pending = true;  // tool_mfa\manager::require_auth on a page that must come first
    }
    return $session;
}

/** $_SESSION after login, or after \core\session\manager::loginas(). */
function fill_session(array $req, int $now): void {
    if (!empty($req['loginas'])) {
        $admin = moodle_user(['id' => $req['userid'], 'username' => 'admin'], $now);
        $_SESSION['REALSESSION'] = moodle_session($req, $now);
        $_SESSION['REALUSER'] = clone $admin;
        $GLOBALS['SESSION'] = new stdClass();
        $user = moodle_user(['id' => $req['loginas']], $now);
        $user->realuser = $_SESSION['REALUSER']->id;
        $user->loginascontext = new \core\context\system();
        $GLOBALS['USER'] = $user;
    } else {
        $GLOBALS['USER'] = moodle_user(['id' => $req['userid']], $now);
        $GLOBALS['SESSION'] = moodle_session($req, $now);
    }
    // As \core\session\manager links them: the globals are the storage, $_SESSION refers to them.
    $_SESSION['USER'] = &$GLOBALS['USER'];
    $_SESSION['SESSION'] = &$GLOBALS['SESSION'];
}

/** Moodle's database handler: keeps base64_encode() of PHP's session encoding. */
class database_like_handler implements SessionHandlerInterface {
    public ?string $sessdata;

    public function __construct(?string $sessdata) {
        $this->sessdata = $sessdata;
    }
    public function open(string $path, string $name): bool { return true; }
    public function close(): bool { return true; }
    public function read(string $id): string|false {
        return $this->sessdata === null ? '' : base64_decode($this->sessdata);
    }
    public function write(string $id, string $data): bool {
        $this->sessdata = base64_encode($data);
        return true;
    }
    public function destroy(string $id): bool { $this->sessdata = null; return true; }
    public function gc(int $max_lifetime): int|false { return 0; }
}

/** The records of Moodle 4.5+'s Redis store (facts from public/lib/classes/session/redis.php). */
class redis_like_handler implements SessionHandlerInterface {
    private \Redis|\RedisCluster $connection;
    private array $conf;
    private int $now;

    public function __construct(array $conf, int $now) {
        $this->conf = $conf;
        $this->now = $now;
        $this->connection = self::connect($conf);
        $serializer = ($conf['serializer'] ?? 'php') === 'igbinary' ? \Redis::SERIALIZER_IGBINARY : \Redis::SERIALIZER_PHP;
        if (!$this->connection->setOption(\Redis::OPT_SERIALIZER, $serializer)) {
            fail('cannot set the serializer');
        }
        if (($conf['prefix'] ?? '') !== '') {
            $this->connection->setOption(\Redis::OPT_PREFIX, $conf['prefix']);
        }
        if (empty($conf['seeds']) && !empty($conf['db'])) {
            $this->connection->select((int) $conf['db']);
        }
    }

    public static function connect(array $conf): \Redis|\RedisCluster {
        $auth = $conf['password'] ?? null;
        if (!empty($conf['seeds'])) {
            return new \RedisCluster(null, $conf['seeds'], 3.0, 3.0, false, $auth);
        }
        $redis = new \Redis();
        if (!empty($conf['socket'])) {
            $redis->connect($conf['socket']);
        } else if (!empty($conf['tls'])) {
            // $CFG->session_redis_encrypt: SSL context options, passed as the 'stream' context.
            $redis->connect('tls://' . $conf['host'], (int) $conf['port'], 3.0, null, 0, 3.0, ['stream' => $conf['tls']]);
        } else {
            $redis->connect($conf['host'], (int) $conf['port'], 3.0);
        }
        if ($auth !== null && $auth !== '') {
            $redis->auth($auth);
        }
        return $redis;
    }

    private function maxlifetime(int $userid, bool $first = false): int {
        $timeout = (int) $this->conf['sessiontimeout'];
        if ($userid == (int) $this->conf['siteguest']) {
            return $timeout * 5;
        }
        if ($userid == 0 && $first) {
            return FIRST_ACCESS_TIMEOUT;
        }
        return $timeout + UPDATE_FREQUENCY + 60;
    }

    private function compress(string $data): string {
        switch ($this->conf['compressor'] ?? 'none') {
            case 'gzip':
                return gzencode($data);
            case 'zstd':
                if (function_exists('zstd_compress')) {
                    return zstd_compress($data);
                }
                // Debian ships no php-zstd: phpredis's own libzstd compression (ZSTD_compress at the
                // default level, as zstd_compress() calls it) makes the same zstd frame.
                $packer = self::connect(array_diff_key($this->conf, ['seeds' => 1]) + $this->first_seed());
                $packer->setOption(\Redis::OPT_SERIALIZER, \Redis::SERIALIZER_NONE);
                $packer->setOption(\Redis::OPT_COMPRESSION, \Redis::COMPRESSION_ZSTD);
                return $packer->_pack($data);
            default:
                return $data;
        }
    }

    private function first_seed(): array {
        if (empty($this->conf['seeds'])) {
            return [];
        }
        [$host, $port] = explode(':', $this->conf['seeds'][0]);
        return ['host' => $host, 'port' => (int) $port];
    }

    /** handler::add_session() as redis.php overrides it: what login_user() calls. */
    public function add_session(string $sid, int $userid): void {
        $ip = '127.0.0.1';
        $record = ['id' => $sid, 'state' => '0', 'sid' => $sid, 'userid' => $userid, 'sessdata' => null,
                   'timecreated' => $this->now, 'timemodified' => $this->now, 'firstip' => $ip, 'lastip' => $ip];
        $maxlifetime = $this->maxlifetime($userid, true);
        if ($userid != 0) {
            $this->connection->hSet('user_' . $userid, $sid, $this->now);
            $this->connection->expire('user_' . $userid, $maxlifetime);
        }
        $this->connection->hMSet('session_' . $sid, $record);
        $this->connection->expire('session_' . $sid, $maxlifetime);
    }

    /** What initialise_user_session() does on a later page: touch timemodified (every 20 s). */
    public function touch(string $sid): void {
        $record = $this->connection->hMGet('session_' . $sid, ['userid', 'timecreated', 'timemodified']);
        if ($record['timemodified'] == $record['timecreated'] || $record['timemodified'] < $this->now - UPDATE_FREQUENCY) {
            $update = ['id' => $sid, 'timemodified' => $this->now, 'userid' => $record['userid']];
            $this->connection->hMSet('session_' . $sid, $update);
            $maxlifetime = $this->maxlifetime((int) $record['userid']);
            $this->connection->expire('session_' . $sid, $maxlifetime);
            if ($record['userid'] != 0) {
                $this->connection->expire('user_' . $record['userid'], $maxlifetime);
            }
        }
    }

    /** handler::update_session() as redis.php overrides it: any record fields, minus sid. */
    public function update_session(string $sid, array $fields): void {
        $userid = $this->connection->hGet('session_' . $sid, 'userid');
        $this->connection->hMSet('session_' . $sid, ['id' => $sid, 'userid' => $userid] + $fields);
        $this->connection->expire('session_' . $sid, $this->maxlifetime((int) $userid));
    }

    public function open(string $path, string $name): bool { return true; }
    public function close(): bool { return true; }

    public function read(string $id): string|false {
        $keys = $this->connection->hMGet('session_' . $id, ['userid', 'sessdata']);
        if ($keys['sessdata'] === false || $keys['sessdata'] === null) {
            return '';
        }
        switch ($this->conf['compressor'] ?? 'none') {
            case 'gzip':
                return gzdecode($keys['sessdata']);
            case 'zstd':
                if (function_exists('zstd_uncompress')) {
                    return zstd_uncompress($keys['sessdata']);
                }
                $packer = self::connect(array_diff_key($this->conf, ['seeds' => 1]) + $this->first_seed());
                $packer->setOption(\Redis::OPT_SERIALIZER, \Redis::SERIALIZER_NONE);
                $packer->setOption(\Redis::OPT_COMPRESSION, \Redis::COMPRESSION_ZSTD);
                return $packer->_unpack($keys['sessdata']);
            default:
                return $keys['sessdata'];
        }
    }

    public function write(string $id, string $data): bool {
        $this->connection->hSet('session_' . $id, 'sessdata', $this->compress($data));
        $keys = $this->connection->hMGet('session_' . $id, ['userid', 'timecreated', 'timemodified']);
        if ($keys['timecreated'] != $keys['timemodified']) {
            $maxlifetime = $this->maxlifetime((int) $keys['userid']);
            $this->connection->expire('session_' . $id, $maxlifetime);
            if ($keys['userid'] != 0) {
                $this->connection->expire('user_' . $keys['userid'], $maxlifetime);
            }
        }
        return true;
    }

    /** redis.php's destroy(): what a Moodle logout ends with. */
    public function destroy(string $id): bool {
        $userid = $this->connection->hGet('session_' . $id, 'userid');
        $this->connection->hDel('user_' . $userid, $id);
        $this->connection->unlink('session_' . $id);
        return true;
    }

    public function gc(int $max_lifetime): int|false { return 0; }
}

function main(): void {
    $req = json_decode(stream_get_contents(STDIN), true, 512, JSON_THROW_ON_ERROR);
    ini_set('session.serialize_handler', 'php');
    ini_set('session.use_cookies', '0');
    ini_set('session.use_only_cookies', '0');
    ini_set('session.use_strict_mode', '0');
    ini_set('session.cache_limiter', '');
    ini_set('session.gc_probability', '0');
    $now = (int) ($req['time'] ?? time());
    $out = [];

    if ($req['action'] === 'sample') {
        // Values for the parsers' cross-check: serialize() and igbinary next to json_encode().
        fill_session($req, $now);
        $sample = ['USER' => $_SESSION['USER'], 'SESSION' => $_SESSION['SESSION'], 'scalars' => [
            'int' => -42, 'big' => PHP_INT_MAX, 'float' => 0.1, 'neg' => -2.5e-10, 'true' => true, 'false' => false,
            'null' => null, 'empty' => '', 'utf8' => 'Zoë ✓', 'list' => [1, 'two', [3]], 'repeat' => ['id', 'id', 'id'],
        ]];
        if (isset($_SESSION['REALSESSION'])) {
            $sample['REALSESSION'] = $_SESSION['REALSESSION'];
        }
        $out['serialized'] = base64_encode(serialize($sample));
        $out['igbinary'] = function_exists('igbinary_serialize') ? base64_encode(igbinary_serialize($sample)) : null;
        $out['json'] = json_encode($sample, JSON_PRESERVE_ZERO_FRACTION | JSON_THROW_ON_ERROR);
        echo json_encode($out), "\n";
        return;
    }

    $store = $req['store'];
    $sid = $req['sid'];
    $handler = null;
    if ($store === 'database') {
        $handler = new database_like_handler($req['sessdata'] ?? null);
        session_set_save_handler($handler, false);
    } else if ($store === 'files') {
        ini_set('session.save_handler', 'files');
        ini_set('session.save_path', $req['dir']);
    } else if ($store === 'redis') {
        $handler = new redis_like_handler($req['redis'], $now);
        session_set_save_handler($handler, false);
    } else {
        fail("unknown store $store");
    }

    if ($req['action'] === 'login') {
        // \core\session\manager::login_user(): a new session record, then $USER, written at the end.
        if ($store === 'redis') {
            $handler->add_session($sid, (int) ($req['recorduser'] ?? $req['userid']));
        }
        session_id($sid);
        session_start();
        fill_session($req, $now);
        session_write_close();
    } else if ($req['action'] === 'page') {
        // A later page: the session is read, timemodified touched, tool_mfa may mark the pass.
        session_id($sid);
        session_start();
        if ($store === 'redis') {
            $handler->touch($sid);
            if (!empty($req['record_update'])) {
                $handler->update_session($sid, $req['record_update']);
            }
        }
        $GLOBALS['USER'] = $_SESSION['USER'];
        $_SESSION['USER'] = &$GLOBALS['USER'];
        $GLOBALS['SESSION'] = $_SESSION['SESSION'];
        $_SESSION['SESSION'] = &$GLOBALS['SESSION'];
        if (!empty($req['pass_mfa'])) {
            $GLOBALS['SESSION']->tool_mfa_authenticated = true;  // tool_mfa\manager::set_pass_state()
        }
        session_write_close();
    } else if ($req['action'] === 'logout') {
        session_id($sid);
        session_start();
        session_destroy();  // the save handler's destroy(): unlink the file / redis.php's destroy()
    } else {
        fail("unknown action {$req['action']}");
    }
    if ($store === 'files' && isset($req['mtime'])) {
        touch($req['dir'] . '/sess_' . $sid, (int) $req['mtime']);  // a session last written then
    }
    if ($store === 'database') {
        $out['sessdata'] = $handler->sessdata;
    }
    $out['sid'] = $sid;
    echo json_encode($out), "\n";
}

main();
}
