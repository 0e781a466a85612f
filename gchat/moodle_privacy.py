"""Moodle's messaging privacy, as a part of :class:`gchat.moodle.Moodle` (docs/design.md):
the contacts-only preference, the site switch ``messaging`` and ``moodle/site:sendmessage``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gchat.cache import TTLCache
from gchat.db import Database, Query
from gchat.moodle_types import Circle, SiteMessaging, config_int

# Moodle's names (public/message/classes/api.php, public/lib/accesslib.php).
PRIVACY_PREFERENCE = "message_blocknoncontacts"
SEND_CAPABILITY = "moodle/site:sendmessage"
CONTEXT_SYSTEM = 10  # CONTEXT_SYSTEM; the system context is (10, instanceid 0)
CAP_ALLOW = 1
CAP_PROHIBIT = -1000  # CAP_PREVENT (-1) and CAP_INHERIT (0) grant nothing by themselves
_ID_CHUNK = 500  # ids per IN (...) list: bounded statements on every engine


class MessagingRules:
    """Moodle's messaging rules (a part of Moodle: it provides the attributes declared here)."""

    db: Database
    _senders: TTLCache[int, bool]
    _site: TTLCache[str, SiteMessaging]
    _tables: dict[str, bool]
    _circle: Callable[[int], Awaitable[Circle]]
    _detect_block_mode: Callable[[Query], str]

    # -- messaging privacy ------------------------------------------------------------------
    #
    # Moodle 3.6+ decides in \core_message\api::can_send_message() (public/message/classes/api.php):
    # the sender needs moodle/site:sendmessage at the system context, then can_contact_user()
    # refuses a recipient who blocked the sender (is_blocked), then reads the recipient's
    # get_user_privacy_messaging_preference(): MESSAGE_PRIVACY_ONLYCONTACTS (1) admits contacts
    # only (is_contact(): a {message_contacts} row in either direction),
    # MESSAGE_PRIVACY_COURSEMEMBER (0, the default) also admits anyone sharing a course, and
    # MESSAGE_PRIVACY_SITE (2) anyone, but only with $CFG->messagingallusers (without it 2 is
    # read as 0). Moodle 2.x (message/externallib.php send_instant_messages(), message/index.php)
    # refuses when the recipient set message_blocknoncontacts (message/lib.php
    # message_print_settings() writes '1' or '0') and has no {message_contacts} row
    # (userid = recipient, contactid = sender); a row with blocked = 1 is a block. Every version
    # stops instant messages when $CFG->messaging is empty (public/lib/messagelib.php
    # message_send(); message/index.php in 2.x).
    #
    # gchat's authorised set is course-mates, whatever the preference: MESSAGE_PRIVACY_SITE
    # widens Moodle's circle to the whole site, but gchat's buddy list, presence and `open` stay
    # within shared courses (a site-wide presence list would show everyone to everyone), so 2
    # behaves as 0 here. Only 1 narrows the circle, and gchat applies it exactly. gchat
    # checks blocks both ways (Moodle only the recipient's) and does not implement the
    # moodle/site:messageanyuser and moodle/site:readallmessages exceptions: it may refuse
    # where Moodle allows, never the reverse.

    def _has_table(self, q: Query, name: str) -> bool:
        if name not in self._tables:
            self._tables[name] = q.table_exists(name)
        return self._tables[name]

    def _contact_mode(self, q: Query) -> str:
        """'one_way' on 2.x-3.5 (the recipient's own rows, blocked = 0), 'mutual' on 3.6+ (a row
        either way), 'none' without the table."""
        if self._detect_block_mode(q) == "contacts":
            return "one_way"
        return "mutual" if self._has_table(q, "message_contacts") else "none"

    def _privacy_rows(self, q: Query, me: int, candidates: set[int], known_only_contacts: set[int] | None = None
                      ) -> tuple[set[int], set[int], set[int], bool]:
        """Of ``candidates``, who accepts contacts only; who may message ``me`` as a contact;
        whose contact ``me`` is; and whether ``me`` accepts contacts only. ``known_only_contacts``:
        the first answer among ``candidates`` and ``me``, when the caller already read it."""
        only_contacts = (self._only_contacts_among(q, candidates | {me}) if known_only_contacts is None
                         else set(known_only_contacts))
        me_only_contacts = me in only_contacts
        only_contacts.discard(me)
        my_contacts: set[int] = set()
        contact_of: set[int] = set()
        mode = self._contact_mode(q)
        if mode == "mutual" and (me_only_contacts or only_contacts):
            rows = q.all("SELECT contactid FROM {message_contacts} WHERE userid = %s "
                         "UNION SELECT userid FROM {message_contacts} WHERE contactid = %s", (me, me))
            my_contacts = contact_of = {int(r[0]) for r in rows}
        elif mode == "one_way":
            if me_only_contacts:
                my_contacts = {int(r[0]) for r in q.all(
                    "SELECT contactid FROM {message_contacts} WHERE userid = %s AND blocked = 0", (me,))}
            if only_contacts:
                contact_of = {int(r[0]) for r in q.all(
                    "SELECT userid FROM {message_contacts} WHERE contactid = %s AND blocked = 0", (me,))}
        return only_contacts, my_contacts, contact_of, me_only_contacts

    def _only_contacts_among(self, q: Query, user_ids: set[int]) -> set[int]:
        if not user_ids or not self._has_table(q, "user_preferences"):
            return set()
        found: set[int] = set()
        ids = sorted(user_ids)
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start:start + _ID_CHUNK]
            marks = ", ".join(["%s"] * len(chunk))
            rows = q.all(f"SELECT userid, value FROM {{user_preferences}} WHERE name = %s AND userid IN ({marks})",
                         [PRIVACY_PREFERENCE, *chunk])
            found |= {int(uid) for uid, value in rows if str(value).strip() == "1"}
        return found

    async def refusal(self, me: int, peer: int) -> str | None:
        """Why ``me`` may not open or message ``peer``, as a protocol reason (``blocked``,
        ``contacts_only``, ``no_shared_course``), or None when it may. A block first (as in
        Moodle), then the shared course (gchat's circle), then the recipient's preference. Costs
        no query within ``cache_ttl`` of the last look at ``me``'s course-mates."""
        circle = await self._circle(me)
        if peer != me and peer in circle.mates:
            return None
        if peer in circle.blocked:
            return "blocked"
        if peer in circle.closed:
            return "contacts_only"
        return "no_shared_course"

    async def site_messaging(self) -> SiteMessaging:
        return await self._site.get_or_load("site", lambda: self.db.run(self._load_site_messaging))

    def _load_site_messaging(self, q: Query) -> SiteMessaging:
        names = ("messaging", "defaultuserroleid", "siteadmins")
        rows = dict(q.all("SELECT name, value FROM {config} WHERE name IN (%s, %s, %s)", names))
        # A missing row reads as the admin default, 1 (admin/settings: admin_setting_configcheckbox
        # 'messaging', default 1; a Moodle install writes every default); a row that PHP's
        # empty() calls empty ('0' or '') turns messaging off.
        value = rows.get("messaging")
        enabled = value is None or str(value).strip() not in ("", "0")
        admins = frozenset(int(part) for part in str(rows.get("siteadmins") or "").split(",")
                           if part.strip().isdigit())
        role = config_int(rows.get("defaultuserroleid"), 0)
        context = None
        if self._has_table(q, "context"):
            found = q.scalar("SELECT id FROM {context} WHERE contextlevel = %s AND instanceid = 0", (CONTEXT_SYSTEM,))
            context = int(found) if found is not None else None
        return SiteMessaging(enabled=enabled, default_role=role or None, site_admins=admins, system_context=context)

    async def messaging_enabled(self) -> bool:
        """Moodle's site switch ``messaging`` (Site administration › Advanced features)."""
        return (await self.site_messaging()).enabled

    async def can_send(self, user_id: int) -> bool:
        """Whether ``user_id`` has ``moodle/site:sendmessage`` at the system context; cached."""
        site = await self.site_messaging()
        return await self._senders.get_or_load(
            user_id, lambda: self.db.run(lambda q: self._has_send_capability(q, user_id, site)))

    def _has_send_capability(self, q: Query, user_id: int, site: SiteMessaging) -> bool:
        """has_capability() (public/lib/accesslib.php) at the system context.

        Site admins ($CFG->siteadmins) have every capability before roles are looked at. Every
        logged-in user has $CFG->defaultuserroleid at the system context
        (get_user_roles_sitewide_accessdata()) besides the roles assigned there.
        has_capability_in_accessdata() evaluates each role on its own: a CAP_PROHIBIT in any role
        refuses, otherwise a CAP_ALLOW in any role grants (a CAP_PREVENT in one role does not
        cancel an allow in another), and a role with neither grants nothing.

        Without the role tables, the system context or ``defaultuserroleid`` (which every Moodle
        install sets), gchat is not looking at a Moodle site's roles (the embedded demo) and
        does not restrict sending."""
        if user_id in site.site_admins:
            return True
        if site.default_role is None or site.system_context is None:
            return True
        if not (self._has_table(q, "role_capabilities") and self._has_table(q, "role_assignments")):
            return True
        rows = q.all("SELECT rc.roleid, rc.permission FROM {role_capabilities} rc "
                     "WHERE rc.contextid = %s AND rc.capability = %s AND (rc.roleid = %s OR rc.roleid IN "
                     "(SELECT ra.roleid FROM {role_assignments} ra WHERE ra.userid = %s AND ra.contextid = %s))",
                     (site.system_context, SEND_CAPABILITY, site.default_role, user_id, site.system_context))
        permissions = {int(row[1]) for row in rows}
        if CAP_PROHIBIT in permissions:
            return False
        return CAP_ALLOW in permissions
