"""Text normalization shared by training, scoring and tokenizer training.

A recognizer can only learn, and be scored on, what it can spell. Every transcript that enters the
toolkit (imported corpora, TTS prompts, references at scoring time) goes through ``normalize_text``,
so "Dr. Smith paid $5.50 on the 21st" in a reference and "doctor smith paid five dollars fifty cents
on the twenty first" in a hypothesis compare equal. The output alphabet is deliberately tiny
(``TEXT_ALPHABET``: a-z, apostrophe, space), which keeps character and BPE vocabularies small and
makes the written form of numbers, money and times unambiguous: they are spelled the way they are
spoken.

The steps run in a fixed order because each one needs what the previous one leaves behind:
unicode folding first (so "½" and curly quotes become ASCII), abbreviations next while letter case
still tells "St. Louis" from "Main St.", then numbers (which need the punctuation inside "3:30" and
"$1,000.50"), then symbols, and only at the end lower-casing and dropping punctuation.
"""

from __future__ import annotations

import re
import string
import unicodedata

__all__ = [
    "TEXT_ALPHABET",
    "is_normalized",
    "normalize_text",
    "number_to_words",
    "ordinal_to_words",
    "year_to_words",
]

#: Every character ``normalize_text`` can produce.
TEXT_ALPHABET: str = string.ascii_lowercase + "' "

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = (
    "_ thousand million billion trillion quadrillion quintillion sextillion septillion "
    "octillion nonillion decillion"
).split()
# Beyond decillions nobody says the number; it is read digit by digit instead.
_MAX_SPELLED = 1000 ** len(_SCALES)
# A run of more than this many digits (no thousands separators) is an id, a phone or card number,
# never a quantity someone would say, so it is read digit by digit.
_MAX_CARDINAL_DIGITS = 15

_ORDINAL_EXCEPTIONS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest or not words:
        words.append(_ONES[rest])
    return words


def number_to_words(n: int) -> str:
    """Spell an integer the way it is said in American English ("one hundred five", no "and").

    Negative numbers get "minus". Magnitudes up to the decillions are spelled with scale words;
    anything larger is read digit by digit, as a person reading it aloud would.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"number_to_words expects an int, got {type(n).__name__}")
    if n < 0:
        return "minus " + number_to_words(-n)
    if n >= _MAX_SPELLED:
        return _digits_to_words(str(n))
    if n == 0:
        return "zero"
    groups: list[str] = []
    scale = 0
    while n:
        n, chunk = divmod(n, 1000)
        if chunk:
            words = _below_thousand(chunk)
            if scale:
                words.append(_SCALES[scale])
            groups.append(" ".join(words))
        scale += 1
    return " ".join(reversed(groups))


def _ordinal_of_words(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last in _ORDINAL_EXCEPTIONS:
        last = _ORDINAL_EXCEPTIONS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}" if head else last


def ordinal_to_words(n: int) -> str:
    """Spell an ordinal ("twenty first", "one hundredth") for inputs such as "21st"."""
    return _ordinal_of_words(number_to_words(n))


def year_to_words(n: int) -> str:
    """Read a year the way it is said: 1984 -> "nineteen eighty four", 1905 -> "nineteen oh five".

    2000-2009 (and any multiple of 1000) are said as cardinals ("two thousand five"); 1900 is
    "nineteen hundred"; 2010 onwards is "twenty ten", "twenty twenty four".
    """
    if n < 0 or n % 1000 == 0 or 2000 <= n <= 2009 or n >= 10000:
        return number_to_words(n)
    high, low = divmod(n, 100)
    if high == 0:
        return number_to_words(low)
    if low == 0:
        return f"{number_to_words(high)} hundred"
    if low < 10:
        return f"{number_to_words(high)} oh {_ONES[low]}"
    return f"{number_to_words(high)} {number_to_words(low)}"


def _digits_to_words(digits: str) -> str:
    return " ".join(_ONES[int(d)] for d in digits if d.isdigit())


def _pluralize(words: str) -> str:
    head, _, last = words.rpartition(" ")
    if last.endswith("y"):
        last = last[:-1] + "ies"
    elif last.endswith("x"):
        last += "es"
    else:
        last += "s"
    return f"{head} {last}" if head else last


# --------------------------------------------------------------------------- unicode folding

_CHAR_MAP = {
    # Quotes and apostrophes: only the straight apostrophe survives, as part of words.
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u02bc": "'",
    "`": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    # Dashes and the minus sign: "-5" must stay a negative number, "10–20" a range.
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
    "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "\u2044": "/",
    # Vulgar fractions, before NFKD would glue "2½" into "21/2".
    "\u00bd": " 1/2", "\u00bc": " 1/4", "\u00be": " 3/4", "\u2153": " 1/3", "\u2154": " 2/3",
    "\u00b0": " degrees ",
    # Letters NFKD does not decompose.
    "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE",
    "\u00f8": "o", "\u00d8": "O", "\u0111": "d", "\u0110": "D", "\u0142": "l", "\u0141": "L",
    "\u00fe": "th", "\u00de": "Th", "\u00f0": "d", "\u00d0": "D", "\u0131": "i",
}
_CHAR_TABLE = str.maketrans(_CHAR_MAP)
# Currency signs are not ASCII but carry words; they survive folding until the number pass.
_CURRENCY_SIGNS = "$\u00a3\u20ac\u00a5"


_MIXED_FRACTION = re.compile(r"(\d)\s*([\u00bd\u00bc\u00be\u2153\u2154])")


def _fold_to_ascii(text: str) -> str:
    if not text.isascii():
        text = _MIXED_FRACTION.sub(r"\1 and \2", text)  # "2½" is "two and one half"
    text = unicodedata.normalize("NFKD", text.translate(_CHAR_TABLE))
    if text.isascii():
        return text
    out = []
    for ch in text:
        if ch.isascii() or ch in _CURRENCY_SIGNS:
            out.append(ch)
        elif unicodedata.combining(ch):
            continue  # the accent of "é" after NFKD split it into "e" + U+0301
        else:
            out.append(" ")  # scripts we cannot spell in a-z separate words rather than vanish
    return "".join(out)


# --------------------------------------------------------------------------- abbreviations

_ABBREVIATION = re.compile(
    r"\b(?P<abbr>mrs|mr|ms|dr|prof|st|jr|sr|mt|vs|etc)(?P<dot>\.)?(?![\w'])", re.IGNORECASE
)
_EG_IE = re.compile(r"\b(?:(?P<eg>e\.g)|(?P<ie>i\.e))\.?(?![\w'])", re.IGNORECASE)
_NUMBER_SIGN = re.compile(r"\b(?:no|nos)\.\s*(?=\d)|#\s*(?=\d)", re.IGNORECASE)
_NEXT_WORD = re.compile(r"\s+([A-Za-z][\w']*)")
_PREV_WORD = re.compile(r"([\w']+)[\s,]*\Z")
_ALWAYS = {"mr": "mister", "mrs": "missus", "jr": "junior", "sr": "senior", "vs": "versus",
           "etc": "et cetera"}
# Expanded only when the writing shows it is a title (a dot, or a capitalized name after it), so
# "10 ms" and "the prof said" keep their meaning.
_TITLE_ONLY = {"ms": "miss", "prof": "professor", "mt": "mount"}


def _expand_abbreviation(match: re.Match[str]) -> str:
    abbr = match.group("abbr").lower()
    text = match.string
    next_word = _NEXT_WORD.match(text, match.end())
    next_capital = bool(next_word) and next_word.group(1)[0].isupper()
    if abbr in _ALWAYS:
        return f" {_ALWAYS[abbr]} "
    prev_word = _PREV_WORD.search(text, max(0, match.start() - 40), match.start())
    prev_number = bool(prev_word) and any(c.isdigit() for c in prev_word.group(1))
    if abbr in _TITLE_ONLY:
        # After a number it is a unit ("took 10 ms."), even at the end of a sentence.
        if next_capital or (match.group("dot") and not prev_number):
            return f" {_TITLE_ONLY[abbr]} "
        return match.group(0)
    prev_street_name = bool(prev_word) and (prev_word.group(1)[0].isupper() or prev_number)
    if abbr == "dr":
        # "Dr. Smith" is a doctor; "Mulholland Dr." is a drive.
        return " drive " if prev_street_name and not next_capital else " doctor "
    # "st": "St. Louis" is a saint, "Main St." and "5th St" are streets.
    if next_capital:
        return " saint "
    if prev_street_name:
        return " street "
    return " saint " if next_word else " street "


def _expand_abbreviations(text: str) -> str:
    text = _EG_IE.sub(lambda m: " for example " if m.group("eg") else " that is ", text)
    text = _NUMBER_SIGN.sub(" number ", text)
    return _ABBREVIATION.sub(_expand_abbreviation, text)


# --------------------------------------------------------------------------- numbers

# An integer, with or without thousands separators ("1,000,000" or "1000000").
_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
# A leading minus only where it cannot be a hyphen or a range ("-5", "(-5)"; not "10-20").
_NEG = r"(?<![\w.\-])-"
_AMPM = r"(?i:[ap])\.?(?i:m)\.?(?![A-Za-z])"

_NUMBER = re.compile(
    "|".join(
        [
            # $5.50, £3, €1.5 million, $5m
            rf"(?P<cur>[{_CURRENCY_SIGNS}])\s?(?P<c_int>{_INT})(?P<c_frac>\.\d+)?"
            r"(?:\s?(?P<c_scale>(?i:thousand|million|billion|trillion))(?![A-Za-z])"
            r"|(?P<c_abbr>(?i:k|m|bn|b))(?![A-Za-z]))?",
            # 3:30, 3:05 pm, 15:00
            rf"(?<![\d:])(?P<t_h>\d{{1,2}}):(?P<t_m>\d{{2}})(?![\d:])(?:\s?(?P<t_ampm>{_AMPM}))?",
            # 10am, 7 p.m.
            rf"(?<![\d:])(?P<a_h>\d{{1,2}})\s?(?P<a_ampm>{_AMPM})",
            # 21st, 1,000th
            rf"(?<!\d)(?P<o_int>{_INT})(?i:st|nd|rd|th)(?![A-Za-z])",
            # 1990s, '80s
            r"(?:(?<![\w'])'|(?<!\d))(?P<d_num>\d0|\d{3}0)s(?![A-Za-z])",
            # 1/2, 3/4 (dates such as 1/2/2020 are left to the plain-number rule)
            r"(?<![\d/])(?P<f_num>\d+)/(?P<f_den>\d+)(?![\d/])",
            # 50%, -3.5 %
            rf"(?<!\d)(?P<p_neg>{_NEG})?(?P<p_int>{_INT})(?P<p_frac>\.\d+)?\s?%",
            # 5€, 20 £ (not "5 $5", where the sign belongs to the next amount)
            rf"(?<!\d)(?P<q_int>{_INT})(?P<q_frac>\.\d+)?\s?(?P<q_cur>[{_CURRENCY_SIGNS}])"
            r"(?!\s?\d)",
            # 42, -7, 3.14, 1,000,000, 1984, 007
            rf"(?<!\d)(?P<n_neg>{_NEG})?(?P<n_int>{_INT})(?P<n_frac>\.\d+)?",
            # .5
            r"(?<![\w.])\.(?P<l_frac>\d+)",
        ]
    )
)

_CURRENCIES = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "\u00a3": ("pound", "pounds", "penny", "pence"),
    "\u20ac": ("euro", "euros", "cent", "cents"),
    "\u00a5": ("yen", "yen", "sen", "sen"),
}
_SCALE_ABBREVIATIONS = {"k": "thousand", "m": "million", "b": "billion", "bn": "billion"}
_FRACTION_DENOMINATORS = {
    2: ("half", "halves"),
    3: ("third", "thirds"),
    4: ("quarter", "quarters"),
    5: ("fifth", "fifths"),
    6: ("sixth", "sixths"),
    7: ("seventh", "sevenths"),
    8: ("eighth", "eighths"),
    9: ("ninth", "ninths"),
    10: ("tenth", "tenths"),
}


def _integer_words(digits: str, *, as_year: bool = False) -> str:
    plain = digits.replace(",", "")
    if len(plain) > 1 and plain.startswith("0") and "," not in digits:
        return _digits_to_words(plain)  # "007", "0800": read as written
    if "," not in digits and len(plain) > _MAX_CARDINAL_DIGITS:
        return _digits_to_words(plain)
    value = int(plain)
    if as_year and "," not in digits and len(plain) == 4 and 1100 <= value <= 2099:
        return year_to_words(value)
    return number_to_words(value)


def _number_words(neg: str | None, digits: str, frac: str | None, *, years: bool = False) -> str:
    words = _integer_words(digits, as_year=years and not neg and not frac)
    if frac:
        words += " point " + _digits_to_words(frac[1:])
    return ("minus " + words) if neg else words


def _money_words(sign: str, digits: str, frac: str | None, scale: str | None) -> str:
    one, many, minor_one, minor_many = _CURRENCIES[sign]
    if scale:
        return f"{_number_words(None, digits, frac)} {scale} {many}"
    major = int(digits.replace(",", ""))
    if frac and len(frac) == 3:  # exactly two decimals: units and cents
        minor = int(frac[1:])
        parts = []
        if major or not minor:
            parts.append(f"{_integer_words(digits)} {one if major == 1 else many}")
        if minor:
            parts.append(f"{number_to_words(minor)} {minor_one if minor == 1 else minor_many}")
        return " ".join(parts)
    unit = one if major == 1 and not frac else many
    return f"{_number_words(None, digits, frac)} {unit}"


def _time_words(hours: str, minutes: str, ampm: str | None) -> str:
    h, m = int(hours), int(minutes)
    suffix = f" {ampm[0].lower()} m" if ampm else ""
    if h > 24 or m > 59:  # not a time of day: a ratio or a score
        return f"{_integer_words(hours)} {_integer_words(minutes)}{suffix}"
    hour = number_to_words(h)
    if m == 0:
        if ampm:
            return hour + suffix
        return f"{hour} o'clock" if 1 <= h <= 12 else f"{hour} hundred"
    minute = f"oh {_ONES[m]}" if m < 10 else number_to_words(m)
    return f"{hour} {minute}{suffix}"


def _decade_words(digits: str) -> str:
    value = int(digits)
    if len(digits) == 2:
        return _pluralize(number_to_words(value) if value else "two thousand")
    return _pluralize(year_to_words(value))


def _fraction_words(numerator: str, denominator: str) -> str:
    num, den = int(numerator), int(denominator)
    if den in _FRACTION_DENOMINATORS and 0 < num < den:
        single, plural = _FRACTION_DENOMINATORS[den]
        return f"{_integer_words(numerator)} {single if num == 1 else plural}"
    return f"{_integer_words(numerator)} {_integer_words(denominator)}"  # "24/7", "9/11"


def _expand_number(match: re.Match[str]) -> str:
    g = match.group
    if g("cur"):
        scale = g("c_scale") or _SCALE_ABBREVIATIONS.get((g("c_abbr") or "").lower())
        words = _money_words(g("cur"), g("c_int"), g("c_frac"), scale and scale.lower())
    elif g("t_h"):
        words = _time_words(g("t_h"), g("t_m"), g("t_ampm"))
    elif g("a_h"):
        words = f"{_integer_words(g('a_h'))} {g('a_ampm')[0].lower()} m"
    elif g("o_int"):
        words = _ordinal_of_words(_integer_words(g("o_int")))
    elif g("d_num"):
        words = _decade_words(g("d_num"))
    elif g("f_num"):
        words = _fraction_words(g("f_num"), g("f_den"))
    elif g("p_int"):
        words = _number_words(g("p_neg"), g("p_int"), g("p_frac")) + " percent"
    elif g("q_int"):
        words = _money_words(g("q_cur"), g("q_int"), g("q_frac"), None)
    elif g("n_int"):
        words = _number_words(g("n_neg"), g("n_int"), g("n_frac"), years=True)
    else:
        words = "point " + _digits_to_words(g("l_frac"))
    return f" {words} "


# --------------------------------------------------------------------------- symbols, cleanup

_SYMBOLS = str.maketrans({"&": " and ", "@": " at ", "+": " plus ", "=": " equals ",
                          "%": " percent "})
# No rule above should leave a digit behind; if one does, it is read rather than lost.
_STRAY_DIGIT = re.compile(r"\d")
_NOT_ALPHABET = re.compile(r"[^a-z' ]+")
# An apostrophe survives only between two letters: "don't", "o'clock", not "'quoted'" or "dogs'".
_LOOSE_APOSTROPHE = re.compile(r"(?<![a-z])'+|'+(?![a-z])")
_NORMALIZED = re.compile(r"(?:[a-z]+(?:'[a-z]+)*(?: [a-z]+(?:'[a-z]+)*)*)?")


def normalize_text(text: str) -> str:
    """Return the spoken, lower-case, a-z/apostrophe/space form of ``text``.

    The same function normalizes training transcripts and scoring references, so a model is never
    penalized for writing "twenty first" where the reference wrote "21st". Normalizing already
    normalized text returns it unchanged.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_text expects a str, got {type(text).__name__}")
    text = _fold_to_ascii(text)
    text = _expand_abbreviations(text)
    text = _NUMBER.sub(_expand_number, text)
    text = _STRAY_DIGIT.sub(lambda m: f" {_ONES[int(m.group())]} ", text)
    text = text.translate(_SYMBOLS).lower()
    text = _NOT_ALPHABET.sub(" ", text)
    text = _LOOSE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def is_normalized(text: str) -> bool:
    """True if ``text`` already has the form ``normalize_text`` produces.

    This checks the form only (alphabet, single spaces, apostrophes inside words), which is cheap
    enough to call on every transcript before deciding whether to normalize it.
    """
    return isinstance(text, str) and _NORMALIZED.fullmatch(text) is not None
