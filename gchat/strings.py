"""The widget's user-interface strings, in English, Portuguese and German.

The bootstrap answer carries ``strings_for(user.lang)`` as ``strings``; static/gchat.js takes every
piece of text it shows from there, so translating the widget means editing this file only.

Placeholders are written ``{name}`` / ``{count}`` and filled in by the widget (plain text, never
HTML). Every table must have the same keys as ``STRINGS["en"]``; a key missing from a translation
falls back to English (``strings_for`` merges), and tests/test_strings.py checks that the tables agree.
"""

DEFAULT_LANG = "en"

_EN: dict[str, str] = {
    "title": "Global Chat",
    "online_count": "{count} online",
    "no_users": "No online users.",
    "connecting": "Connecting…",
    "reconnecting": "Connection lost, retrying…",
    "show_list": "Show the list of online users",
    "hide_list": "Hide the list of online users",
    "chat_with": "Chat with {name}",
    "open_chat_with": "Open a chat with {name}",
    "messages": "Messages with {name}",
    "message_label": "Message to {name}",
    "placeholder": "Write a message…",
    "send": "Send",
    "close": "Close",
    "minimise": "Minimise",
    "maximise": "Maximise",
    "typing": "{name} is typing…",
    "pending": "Sending…",
    "sent": "Sent",
    "failed": "Not sent.",
    "retry": "Retry",
    "load_older": "Load older messages",
    "loading": "Loading…",
    "no_older": "This is the beginning of the conversation.",
    "unread": "{count} unread",
    "new_message_from": "New message from {name}: {text}",
    "title_flash": "({count}) {name} says…",
    "you": "You",
    "offline": "offline",
    "online": "online",
    "error_too_long": "The message is too long (at most {max} characters).",
    "error_empty": "The message is empty.",
    "error_not_allowed": "You cannot chat with this person.",
    "error_rate_limited": "Too many messages, slow down a little.",
    "error_unavailable": "The chat is unavailable right now; it will retry.",
    "error_generic": "Something went wrong.",
    "session_ended": "Your session has ended.",
    "today": "Today",
    "yesterday": "Yesterday",
}

_PT: dict[str, str] = {
    "title": "Chat Global",
    "online_count": "{count} online",
    "no_users": "Nenhum usuário online.",
    "connecting": "Conectando…",
    "reconnecting": "Conexão perdida, tentando novamente…",
    "show_list": "Mostrar a lista de usuários online",
    "hide_list": "Ocultar a lista de usuários online",
    "chat_with": "Conversa com {name}",
    "open_chat_with": "Abrir uma conversa com {name}",
    "messages": "Mensagens com {name}",
    "message_label": "Mensagem para {name}",
    "placeholder": "Escreva uma mensagem…",
    "send": "Enviar",
    "close": "Fechar",
    "minimise": "Minimizar",
    "maximise": "Maximizar",
    "typing": "{name} está digitando…",
    "pending": "Enviando…",
    "sent": "Enviada",
    "failed": "Não enviada.",
    "retry": "Tentar novamente",
    "load_older": "Carregar mensagens anteriores",
    "loading": "Carregando…",
    "no_older": "Este é o início da conversa.",
    "unread": "{count} não lidas",
    "new_message_from": "Nova mensagem de {name}: {text}",
    "title_flash": "({count}) {name} diz…",
    "you": "Você",
    "offline": "offline",
    "online": "online",
    "error_too_long": "A mensagem é longa demais (no máximo {max} caracteres).",
    "error_empty": "A mensagem está vazia.",
    "error_not_allowed": "Você não pode conversar com esta pessoa.",
    "error_rate_limited": "Mensagens demais, vá um pouco mais devagar.",
    "error_unavailable": "O chat está indisponível no momento; ele tentará novamente.",
    "error_generic": "Algo deu errado.",
    "session_ended": "Sua sessão terminou.",
    "today": "Hoje",
    "yesterday": "Ontem",
}

_DE: dict[str, str] = {
    "title": "Globaler Chat",
    "online_count": "{count} online",
    "no_users": "Keine Benutzer online.",
    "connecting": "Verbindung wird hergestellt…",
    "reconnecting": "Verbindung verloren, neuer Versuch…",
    "show_list": "Liste der Benutzer online anzeigen",
    "hide_list": "Liste der Benutzer online ausblenden",
    "chat_with": "Chat mit {name}",
    "open_chat_with": "Chat mit {name} öffnen",
    "messages": "Nachrichten mit {name}",
    "message_label": "Nachricht an {name}",
    "placeholder": "Nachricht schreiben…",
    "send": "Senden",
    "close": "Schließen",
    "minimise": "Minimieren",
    "maximise": "Maximieren",
    "typing": "{name} schreibt…",
    "pending": "Wird gesendet…",
    "sent": "Gesendet",
    "failed": "Nicht gesendet.",
    "retry": "Erneut versuchen",
    "load_older": "Ältere Nachrichten laden",
    "loading": "Wird geladen…",
    "no_older": "Hier beginnt die Unterhaltung.",
    "unread": "{count} ungelesen",
    "new_message_from": "Neue Nachricht von {name}: {text}",
    "title_flash": "({count}) {name} schreibt…",
    "you": "Sie",
    "offline": "offline",
    "online": "online",
    "error_too_long": "Die Nachricht ist zu lang (höchstens {max} Zeichen).",
    "error_empty": "Die Nachricht ist leer.",
    "error_not_allowed": "Sie können mit dieser Person nicht chatten.",
    "error_rate_limited": "Zu viele Nachrichten, bitte etwas langsamer.",
    "error_unavailable": "Der Chat ist gerade nicht erreichbar; er versucht es erneut.",
    "error_generic": "Etwas ist schiefgegangen.",
    "session_ended": "Ihre Sitzung ist beendet.",
    "today": "Heute",
    "yesterday": "Gestern",
}

# Constants: never mutated. strings_for() always hands out a fresh dict for callers to keep.
STRINGS: dict[str, dict[str, str]] = {"en": _EN, "pt": _PT, "de": _DE}


def language_of(lang: str | None) -> str:
    """The table a Moodle language code uses: ``pt_br`` → ``pt``, ``de_du`` → ``de``, else ``en``.

    Moodle codes are a base language plus optional ``_variant`` parts (``pt_br``, ``de_du``,
    ``de_comm``); browsers and some themes use ``-`` instead. Unknown or empty → English.
    """
    if not lang:
        return DEFAULT_LANG
    base = str(lang).strip().lower().replace("-", "_").split("_", 1)[0]
    return base if base in STRINGS else DEFAULT_LANG


def strings_for(lang: str | None) -> dict[str, str]:
    """A new dict of every UI string for ``lang``; keys a translation lacks come from English."""
    merged = dict(STRINGS[DEFAULT_LANG])
    merged.update(STRINGS[language_of(lang)])
    return merged
