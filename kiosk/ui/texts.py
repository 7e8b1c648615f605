"""What the customer screen says, in English and French (the stores are in Canada), and money
as the screen writes it.

Keys are the flow's prompt keys (kiosk.flow, kiosk.liveness), result outcomes, decline codes
and error codes; an unknown key is shown as a sentence made of its words rather than not at all.
"""

from __future__ import annotations

from kiosk.money import minor_digits

LOCALES = ("en", "fr")

Texts = dict[str, str]

PROMPTS: dict[str, Texts] = {
    "welcome": {"en": "Welcome", "fr": "Bienvenue"},
    "read_notice": {
        "en": "Please read the notice, then sign",
        "fr": "Veuillez lire l’avis, puis signer",
    },
    "look_at_camera": {"en": "Look at the camera", "fr": "Regardez la caméra"},
    "one_person": {"en": "One person at a time, please", "fr": "Une personne à la fois, svp"},
    "move_closer": {"en": "Move a little closer", "fr": "Approchez-vous un peu"},
    "more_light": {
        "en": "Too dark: step into the light",
        "fr": "Trop sombre : avancez dans la lumière",
    },
    "less_light": {
        "en": "Too bright: step out of the glare",
        "fr": "Trop de lumière : évitez le reflet",
    },
    "hold_still": {"en": "Hold still", "fr": "Ne bougez plus"},
    "face_camera": {"en": "Face the camera", "fr": "Placez-vous face à la caméra"},
    "turn_left": {"en": "Turn your head to your left", "fr": "Tournez la tête vers votre gauche"},
    "turn_right": {
        "en": "Turn your head to your right",
        "fr": "Tournez la tête vers votre droite",
    },
    "please_wait": {"en": "One moment…", "fr": "Un instant…"},
    "enter_phone_digits": {
        "en": "Type the last 4 digits of your phone number",
        "fr": "Entrez les 4 derniers chiffres de votre numéro de téléphone",
    },
    "enter_phone_number": {
        "en": "Type your full phone number",
        "fr": "Entrez votre numéro de téléphone complet",
    },
}

OUTCOMES: dict[str, Texts] = {
    "approved": {"en": "Payment approved", "fr": "Paiement approuvé"},
    "declined": {"en": "Payment declined", "fr": "Paiement refusé"},
    "enrolled": {"en": "You are enrolled", "fr": "Inscription terminée"},
    "deleted": {"en": "Your face data is deleted", "fr": "Vos données faciales sont effacées"},
    "not_found": {"en": "We could not find you", "fr": "Nous ne vous avons pas trouvé"},
    "full_phone_required": {
        "en": "Your full phone number is needed",
        "fr": "Votre numéro de téléphone complet est requis",
    },
    "cancelled": {"en": "Cancelled", "fr": "Annulé"},
    "other_way": {"en": "Please pay another way", "fr": "Veuillez payer autrement"},
    "timed_out": {"en": "Time is up", "fr": "Temps écoulé"},
    "liveness_failed": {
        "en": "We could not confirm it is you",
        "fr": "Nous n’avons pas pu confirmer que c’est vous",
    },
    "no_face": {
        "en": "We could not see your face clearly",
        "fr": "Nous n’avons pas bien vu votre visage",
    },
    "server_unavailable": {
        "en": "The payment service is not answering",
        "fr": "Le service de paiement ne répond pas",
    },
    "error": {"en": "Something went wrong", "fr": "Une erreur est survenue"},
}

# Why a payment was declined (server.payments.service.PUBLIC_DECLINE_CODES; an older server's
# finer codes are kept below) and other result codes.
REASONS: dict[str, Texts] = {
    "not_approved": {
        "en": "Not approved. You can try again, or pay another way. "
        "If you are enrolled, the reason is in your facepay account.",
        "fr": "Non approuvé. Vous pouvez réessayer ou payer autrement. "
        "Si vous êtes inscrit, la raison figure dans votre compte facepay.",
    },
    "step_up_locked": {
        "en": "Too many failed attempts today: paying by face is paused for this number.",
        "fr": "Trop d’essais manqués aujourd’hui : le paiement par le visage est suspendu "
        "pour ce numéro.",
    },
    "no_match": {"en": "Your face was not recognised.", "fr": "Votre visage n’a pas été reconnu."},
    "insufficient_funds": {
        "en": "Not enough money in your wallet.",
        "fr": "Solde insuffisant dans votre portefeuille.",
    },
    "limit_exceeded": {"en": "Over your limit.", "fr": "Limite dépassée."},
    "consent_withdrawn": {
        "en": "Paying by face is turned off for you.",
        "fr": "Le paiement par le visage est désactivé pour vous.",
    },
    "account_suspended": {"en": "Your account is on hold.", "fr": "Votre compte est suspendu."},
    "currency_mismatch": {
        "en": "Your wallet is in another currency.",
        "fr": "Votre portefeuille est dans une autre devise.",
    },
    "step_up_failed": {
        "en": "The phone number did not match.",
        "fr": "Le numéro de téléphone ne correspond pas.",
    },
    "step_up_expired": {"en": "The check expired.", "fr": "La vérification a expiré."},
    "step_up_timed_out": {
        "en": "No phone number was typed.",
        "fr": "Aucun numéro de téléphone n’a été entré.",
    },
    "full_phone_required": {
        "en": "The last 4 digits are not enough here: start again with your full phone number.",
        "fr": "Les 4 derniers chiffres ne suffisent pas ici : recommencez avec votre numéro "
        "complet.",
    },
}

OTHER_WAYS: dict[str, Texts] = {
    "card": {"en": "Card", "fr": "Carte"},
    "cash": {"en": "Cash", "fr": "Comptant"},
}

PROBLEMS: dict[str, Texts] = {
    "camera_lost": {
        "en": "The camera is not working right now. Please pay another way.",
        "fr": "La caméra ne fonctionne pas pour le moment. Veuillez payer autrement.",
    },
    "source_failed": {
        "en": "The camera is not available. Please pay another way.",
        "fr": "La caméra n’est pas disponible. Veuillez payer autrement.",
    },
    "source_ended": {
        "en": "The camera is not available. Please pay another way.",
        "fr": "La caméra n’est pas disponible. Veuillez payer autrement.",
    },
}

# What the shopper is told when an action is refused (the error's code); others: "error".
ERRORS: dict[str, Texts] = {
    "name_required": {"en": "Type your full name to sign.", "fr": "Tapez votre nom complet."},
    "bad_digits": {"en": "Type exactly 4 digits.", "fr": "Tapez exactement 4 chiffres."},
    "bad_phone_number": {
        "en": "Type your full phone number: 7 to 15 digits.",
        "fr": "Tapez votre numéro complet : 7 à 15 chiffres.",
    },
    "no_consent_pending": {
        "en": "There is nothing to sign now.",
        "fr": "Il n’y a rien à signer pour le moment.",
    },
    "no_step_up_pending": {
        "en": "No phone number is needed now.",
        "fr": "Aucun numéro n’est demandé pour le moment.",
    },
    "error": {"en": "That did not work. Please ask staff.", "fr": "Cela n’a pas fonctionné."},
}

# The page's fixed words.
LABELS: dict[str, Texts] = {
    "amount_due": {"en": "Amount due", "fr": "Montant dû"},
    "amount_paid": {"en": "Amount paid", "fr": "Montant payé"},
    "idle_hint": {
        "en": "Pay by face: the cashier starts the payment",
        "fr": "Payez avec votre visage : la caisse lance le paiement",
    },
    "name": {"en": "Your full name", "fr": "Votre nom complet"},
    "agree": {"en": "I agree", "fr": "J’accepte"},
    "notice_title": {"en": "Consent to pay by face", "fr": "Consentement au paiement facial"},
    "digits": {"en": "Last 4 digits", "fr": "4 derniers chiffres"},
    "phone_number": {"en": "Phone number", "fr": "Numéro de téléphone"},
    "keypad": {"en": "Keypad", "fr": "Clavier"},
    "delete_key": {"en": "Delete", "fr": "Effacer"},
    "confirm": {"en": "Confirm", "fr": "Confirmer"},
    "tries_left": {"en": "Tries left", "fr": "Essais restants"},
    "balance": {"en": "Wallet balance", "fr": "Solde du portefeuille"},
    "other_way": {"en": "Pay another way", "fr": "Payer autrement"},
    "other_ways": {"en": "Other ways to pay", "fr": "Autres modes de paiement"},
    "cancel": {"en": "Cancel", "fr": "Annuler"},
    "preview": {"en": "Camera preview", "fr": "Aperçu de la caméra"},
}


def text(table: dict[str, Texts], key: str) -> Texts:
    """The texts of `key`, or its words when the table has no entry."""
    found = table.get(key)
    if found is not None:
        return found
    words = key.replace("_", " ").strip().capitalize() or "…"
    return {locale: words for locale in LOCALES}


# ---------------------------------------------------------------- money

_SYMBOLS = {"CAD": "$", "USD": "US$", "EUR": "€", "GBP": "£"}
_NARROW_NBSP = "\u202f"
_NBSP = "\u00a0"


def money(minor: int, currency: str) -> Texts:
    """1250 CAD -> {"en": "$12.50", "fr": "12,50 $"}, with each language's separators."""
    digits = minor_digits(currency)
    sign = "-" if minor < 0 else ""
    units, cents = divmod(abs(minor), 10**digits) if digits else (abs(minor), 0)
    grouped = f"{units:,}"
    fraction = f"{cents:0{digits}d}" if digits else ""
    en = grouped + (f".{fraction}" if digits else "")
    fr = grouped.replace(",", _NARROW_NBSP) + (f",{fraction}" if digits else "")
    code = currency.upper()
    symbol = _SYMBOLS.get(code)
    return {
        "en": f"{sign}{symbol}{en}" if symbol else f"{sign}{en} {code}",
        "fr": f"{sign}{fr}{_NBSP}{symbol or code}",
    }
