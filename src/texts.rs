//! Localized texts: push titles and bodies, SMS texts, and amounts formatted per locale.
//! `it`, `en` and `sq` are built in; any other locale falls back to `en`.

use crate::challenge::context::RequestContext;
use crate::challenge::model::{ChallengeSpec, Kind, Transaction};

/// A supported language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    It,
    En,
    Sq,
}

impl Lang {
    /// `it`, `it-IT`, `sq_AL` … pick their language; anything else is English.
    pub fn from_locale(locale: &str) -> Lang {
        let lang = locale
            .split(['-', '_'])
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        match lang.as_str() {
            "it" => Lang::It,
            "sq" => Lang::Sq,
            _ => Lang::En,
        }
    }
}

fn currency_symbol(code: &str) -> Option<&'static str> {
    Some(match code {
        "EUR" => "€",
        "USD" => "$",
        "GBP" => "£",
        "CHF" => "CHF",
        _ => return None,
    })
}

/// Formats `125.40 EUR` as `125,40 €` (it, sq) or `€125.40` (en), with thousands grouped.
pub fn format_amount(amount: &str, currency: &str, lang: Lang) -> String {
    let (int, frac) = amount.split_once('.').unwrap_or((amount, ""));
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    let (group, dec) = match lang {
        Lang::En => (',', '.'),
        Lang::It => ('.', ','),
        Lang::Sq => ('.', ','),
    };
    let symbol = currency_symbol(currency);
    // English puts a one-character symbol first (€1,249.90); otherwise it follows.
    let leading = match (lang, symbol) {
        (Lang::En, Some(sym)) if sym.chars().count() == 1 => Some(sym),
        _ => None,
    };
    let mut out = String::with_capacity(int.len() + int.len() / 3 + frac.len() + 12);
    if let Some(sym) = leading {
        out.push_str(sym);
    }
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(group);
        }
        out.push(ch);
    }
    out.push(dec);
    match frac.len() {
        0 => out.push_str("00"),
        1 => {
            out.push_str(frac);
            out.push('0');
        }
        _ => out.push_str(frac),
    }
    if leading.is_none() {
        out.push(' ');
        out.push_str(symbol.unwrap_or(currency));
    }
    out
}

/// Title and body of the challenge push.
pub fn push_texts(locale: &str, kind: Kind, tx: Option<&Transaction>) -> (String, String) {
    let lang = Lang::from_locale(locale);
    if let (Kind::Payment, Some(t)) = (kind, tx) {
        let amount = format_amount(&t.amount, &t.currency, lang);
        let payee = &t.payee;
        return match lang {
            Lang::It => (
                "Autorizza il pagamento".into(),
                format!("Pagamento di {amount} a {payee}"),
            ),
            Lang::En => (
                "Approve payment".into(),
                format!("Payment of {amount} to {payee}"),
            ),
            Lang::Sq => (
                "Autorizo pagesën".into(),
                format!("Pagesë prej {amount} për {payee}"),
            ),
        };
    }
    let (title, body) = match (lang, kind) {
        (Lang::It, Kind::Login) => ("Accesso", "Confermi l'accesso al tuo conto?"),
        (Lang::It, Kind::DeviceBinding) => (
            "Nuovo dispositivo",
            "Confermi l'associazione di un nuovo dispositivo?",
        ),
        (Lang::It, Kind::CredentialRecovery) => (
            "Recupero credenziali",
            "Confermi il recupero delle credenziali?",
        ),
        (Lang::It, _) => ("Richiesta di autorizzazione", "Confermi l'operazione?"),
        (Lang::En, Kind::Login) => ("Sign-in", "Is it you signing in to your account?"),
        (Lang::En, Kind::DeviceBinding) => ("New device", "Confirm binding a new device?"),
        (Lang::En, Kind::CredentialRecovery) => {
            ("Credential recovery", "Confirm the credential recovery?")
        }
        (Lang::En, _) => ("Authorization request", "Do you confirm this operation?"),
        (Lang::Sq, Kind::Login) => ("Hyrje", "A po hyni ju në llogarinë tuaj?"),
        (Lang::Sq, Kind::DeviceBinding) => {
            ("Pajisje e re", "Konfirmoni lidhjen e një pajisjeje të re?")
        }
        (Lang::Sq, Kind::CredentialRecovery) => (
            "Rikuperim kredencialesh",
            "Konfirmoni rikuperimin e kredencialeve?",
        ),
        (Lang::Sq, _) => ("Kërkesë autorizimi", "A e konfirmoni veprimin?"),
    };
    (title.into(), body.into())
}

/// Title and body of a challenge's push as the device shows them: [`push_texts`], the
/// title prefixed with the account's `user_label` (a device with several accounts),
/// the body followed by where and from what the operation was asked (`context`).
pub fn challenge_texts(spec: &ChallengeSpec) -> (String, String) {
    let (mut title, mut body) = push_texts(&spec.locale, spec.kind, spec.transaction.as_ref());
    if let Some(label) = &spec.user_label {
        title = format!("{label}: {title}");
    }
    if let Some(line) = spec
        .context
        .as_deref()
        .and_then(|c| context_line(Lang::from_locale(&spec.locale), c))
    {
        body.push('\n');
        body.push_str(&line);
    }
    (title, body)
}

/// "Requested from {client} near {location}." in the user's language, or `None` when
/// the context names neither.
pub fn context_line(lang: Lang, c: &RequestContext) -> Option<String> {
    let (client, location) = (c.client.as_deref(), c.location.as_deref());
    Some(match (lang, client, location) {
        (_, None, None) => return None,
        (Lang::En, Some(cl), Some(lo)) => format!("Requested from {cl} near {lo}."),
        (Lang::En, Some(cl), None) => format!("Requested from {cl}."),
        (Lang::En, None, Some(lo)) => format!("Requested near {lo}."),
        (Lang::It, Some(cl), Some(lo)) => format!("Richiesta da {cl} vicino a {lo}."),
        (Lang::It, Some(cl), None) => format!("Richiesta da {cl}."),
        (Lang::It, None, Some(lo)) => format!("Richiesta vicino a {lo}."),
        (Lang::Sq, Some(cl), Some(lo)) => format!("Kërkuar nga {cl} pranë {lo}."),
        (Lang::Sq, Some(cl), None) => format!("Kërkuar nga {cl}."),
        (Lang::Sq, None, Some(lo)) => format!("Kërkuar pranë {lo}."),
    })
}

/// The SMS text carrying a one-time code; payments name amount and payee. Albanian SMS
/// texts are written without diacritics, as is customary, so they stay GSM-7 (160 per
/// segment instead of 70).
pub fn sms_text(locale: &str, kind: Kind, tx: Option<&Transaction>, code: &str) -> String {
    let lang = Lang::from_locale(locale);
    if let (Kind::Payment, Some(t)) = (kind, tx) {
        let amount = format_amount(&t.amount, &t.currency, lang);
        let payee = &t.payee;
        return match lang {
            Lang::It => format!("Codice {code} per autorizzare il pagamento di {amount} a {payee}. Non condividerlo con nessuno."),
            Lang::En => format!("Code {code} to approve the payment of {amount} to {payee}. Never share it."),
            Lang::Sq => format!("Kodi {code} per te autorizuar pagesen prej {amount} per {payee}. Mos e ndani me askend."),
        };
    }
    let what = match (lang, kind) {
        (Lang::It, Kind::Login) => "per accedere",
        (Lang::It, Kind::DeviceBinding) => "per associare il nuovo dispositivo",
        (Lang::It, Kind::CredentialRecovery) => "per recuperare le credenziali",
        (Lang::It, _) => "per confermare l'operazione",
        (Lang::En, Kind::Login) => "to sign in",
        (Lang::En, Kind::DeviceBinding) => "to bind your new device",
        (Lang::En, Kind::CredentialRecovery) => "to recover your credentials",
        (Lang::En, _) => "to confirm the operation",
        (Lang::Sq, Kind::Login) => "per te hyre",
        (Lang::Sq, Kind::DeviceBinding) => "per te lidhur pajisjen e re",
        (Lang::Sq, Kind::CredentialRecovery) => "per te rikuperuar kredencialet",
        (Lang::Sq, _) => "per te konfirmuar veprimin",
    };
    match lang {
        Lang::It => format!("Codice {code} {what}. Non condividerlo con nessuno."),
        Lang::En => format!("Code {code} {what}. Never share it."),
        Lang::Sq => format!("Kodi {code} {what}. Mos e ndani me askend."),
    }
}

/// The GSM 03.38 basic character set (plus the extension table counted as two).
fn gsm7_cost(c: char) -> Option<usize> {
    const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const EXT: &str = "^{}\\[~]|€\u{c}";
    if BASIC.contains(c) {
        Some(1)
    } else if EXT.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The encoding an SMS text needs and its length in that encoding's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmsEncoding {
    Gsm7 { septets: usize },
    Ucs2 { units: usize },
}

impl SmsEncoding {
    pub fn of(text: &str) -> SmsEncoding {
        let gsm: Option<usize> = text.chars().map(gsm7_cost).sum();
        match gsm {
            Some(septets) => SmsEncoding::Gsm7 { septets },
            None => SmsEncoding::Ucs2 {
                units: text.encode_utf16().count(),
            },
        }
    }
    /// Fits one SMS segment (GSM-7: 160 septets, UCS-2: 70 units).
    pub fn fits_one_segment(self) -> bool {
        match self {
            SmsEncoding::Gsm7 { septets } => septets <= 160,
            SmsEncoding::Ucs2 { units } => units <= 70,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx() -> Transaction {
        Transaction {
            amount: "125.40".into(),
            currency: "EUR".into(),
            payee: "Mario Rossi".into(),
        }
    }

    #[test]
    fn amounts() {
        assert_eq!(format_amount("125.40", "EUR", Lang::It), "125,40 €");
        assert_eq!(format_amount("125.40", "EUR", Lang::En), "€125.40");
        assert_eq!(
            format_amount("1234567.5", "EUR", Lang::Sq),
            "1.234.567,50 €"
        );
        assert_eq!(format_amount("3", "XYZ", Lang::En), "3.00 XYZ");
        assert_eq!(format_amount("1000", "CHF", Lang::En), "1,000.00 CHF");
    }

    #[test]
    fn locales_fall_back_to_english() {
        assert_eq!(Lang::from_locale("it-IT"), Lang::It);
        assert_eq!(Lang::from_locale("sq_AL"), Lang::Sq);
        assert_eq!(Lang::from_locale("de"), Lang::En);
    }

    #[test]
    fn every_template_renders_and_payments_name_amount_and_payee() {
        for locale in ["it", "en", "sq", "fr"] {
            for kind in Kind::ALL {
                let t = tx();
                let txo = (kind == Kind::Payment).then_some(&t);
                let (title, body) = push_texts(locale, kind, txo);
                assert!(!title.is_empty() && !body.is_empty());
                let sms = sms_text(locale, kind, txo, "123456");
                assert!(sms.contains("123456"), "{sms}");
                if kind == Kind::Payment {
                    let amount = format_amount("125.40", "EUR", Lang::from_locale(locale));
                    for s in [&body, &sms] {
                        assert!(s.contains(&amount) && s.contains("Mario Rossi"), "{s}");
                    }
                }
                let enc = SmsEncoding::of(&sms);
                // Every built-in text fits one segment with a short payee.
                assert!(enc.fits_one_segment(), "{locale} {kind}: {sms} -> {enc:?}");
            }
        }
    }

    #[test]
    fn the_label_and_the_context_show_in_every_language() {
        let body = serde_json::json!({
            "v": 1, "challenge_id": "c", "user_id": "u", "kind": "login", "ttl_seconds": 60,
            "user_label": "Conto business",
            "context": {"client": "Chrome su macOS", "location": "Milano", "ip": "203.0.113.7"}
        });
        let mut spec =
            crate::challenge::model::parse_challenge(body.to_string().as_bytes(), 0, 0).unwrap();
        for (locale, word) in [
            ("it", "Richiesta da"),
            ("en", "Requested from"),
            ("sq", "Kërkuar nga"),
        ] {
            spec.locale = locale.into();
            let (title, body) = challenge_texts(&spec);
            assert!(title.starts_with("Conto business: "), "{title}");
            assert!(
                body.contains(word) && body.contains("Milano") && body.contains("Chrome su macOS"),
                "{body}"
            );
            assert!(!body.contains("203.0.113.7"), "the IP is data, not text");
        }
        spec.context = None;
        spec.user_label = None;
        assert_eq!(challenge_texts(&spec), push_texts("sq", Kind::Login, None));
    }

    #[test]
    fn encodings() {
        assert_eq!(SmsEncoding::of("abc €"), SmsEncoding::Gsm7 { septets: 6 });
        assert!(matches!(
            SmsEncoding::of("ë"),
            SmsEncoding::Ucs2 { units: 1 }
        ));
        assert!(!SmsEncoding::of(&"a".repeat(161)).fits_one_segment());
    }

    #[test]
    fn segment_boundaries() {
        assert!(SmsEncoding::of(&"a".repeat(160)).fits_one_segment());
        // `€` is in the extension table: two septets.
        let t = format!("{}€", "a".repeat(158));
        assert_eq!(SmsEncoding::of(&t), SmsEncoding::Gsm7 { septets: 160 });
        assert!(SmsEncoding::of(&t).fits_one_segment());
        assert!(!SmsEncoding::of(&format!("{t}a")).fits_one_segment());
        let u = "ë".repeat(70);
        assert_eq!(SmsEncoding::of(&u), SmsEncoding::Ucs2 { units: 70 });
        assert!(SmsEncoding::of(&u).fits_one_segment());
        assert!(!SmsEncoding::of(&format!("{u}a")).fits_one_segment());
        // Outside the BMP: a surrogate pair, two UCS-2 units.
        assert_eq!(SmsEncoding::of("😀"), SmsEncoding::Ucs2 { units: 2 });
    }

    #[test]
    fn built_in_sms_texts_stay_gsm7() {
        // Every built-in SMS text (euro payments included) keeps to GSM-7: 160 characters
        // per segment rather than 70.
        for locale in ["it", "en", "sq"] {
            for kind in Kind::ALL {
                let t = tx();
                let sms = sms_text(
                    locale,
                    kind,
                    (kind == Kind::Payment).then_some(&t),
                    "123456",
                );
                assert!(
                    matches!(SmsEncoding::of(&sms), SmsEncoding::Gsm7 { .. }),
                    "{locale} {kind}: {sms}"
                );
            }
        }
    }
}
