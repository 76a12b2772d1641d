"""normalize_text: the spoken, a-z form shared by training and scoring."""

from __future__ import annotations

import random

import pytest

from edgeasr.text.normalize import (
    TEXT_ALPHABET,
    is_normalized,
    normalize_text,
    number_to_words,
    ordinal_to_words,
    year_to_words,
)

CASES = [
    # case, unicode folding, punctuation
    ("Hello, World!", "hello world"),
    ("  many   spaces\tand\nnewlines ", "many spaces and newlines"),
    ("Café déjà vu, naïve Zoë", "cafe deja vu naive zoe"),
    ("“Curly” quotes and ‘single’ ones", "curly quotes and single ones"),
    ("It’s John’s", "it's john's"),
    ("Straße Æsop Øresund Łódź", "strasse aesop oresund lodz"),
    ("日本語 text 😀 here", "text here"),
    ("a—b – c", "a b c"),
    ("well-known state-of-the-art", "well known state of the art"),
    ("semi;colon: dash/slash (paren) [br] {cu}", "semi colon dash slash paren br cu"),
    ("U.S.A.", "u s a"),
    # apostrophes
    ("I don't know; it's 5 o'clock.", "i don't know it's five o'clock"),
    ("'quoted' students' rock 'n' roll", "quoted students rock n roll"),
    ("DON'T STOP", "don't stop"),
    # cardinals
    ("0", "zero"),
    ("7 apples", "seven apples"),
    ("13", "thirteen"),
    ("42", "forty two"),
    ("100", "one hundred"),
    ("105", "one hundred five"),
    ("999", "nine hundred ninety nine"),
    ("12345", "twelve thousand three hundred forty five"),
    ("1,000,000", "one million"),
    ("2,500 people", "two thousand five hundred people"),
    ("3000000000", "three billion"),
    ("1,234,567,891", "one billion two hundred thirty four million five hundred sixty seven "
                      "thousand eight hundred ninety one"),
    ("007", "zero zero seven"),
    ("12345678901234567890", "one two three four five six seven eight nine zero one two three "
                             "four five six seven eight nine zero"),
    ("1,2,3", "one two three"),
    # negatives and decimals
    ("-5", "minus five"),
    ("it was -12 degrees", "it was minus twelve degrees"),
    ("(-3)", "minus three"),
    ("pages 10-20", "pages ten twenty"),
    ("3.14", "three point one four"),
    ("-2.5", "minus two point five"),
    ("0.05", "zero point zero five"),
    (".5", "point five"),
    ("1,234.5", "one thousand two hundred thirty four point five"),
    # ordinals
    ("1st 2nd 3rd 4th", "first second third fourth"),
    ("11th 12th 13th", "eleventh twelfth thirteenth"),
    ("the 21st century", "the twenty first century"),
    ("22nd 23rd 30th 99th", "twenty second twenty third thirtieth ninety ninth"),
    ("100th 101st", "one hundredth one hundred first"),
    ("1,000th", "one thousandth"),
    ("5TH AVENUE", "fifth avenue"),
    # years
    ("1984", "nineteen eighty four"),
    ("in 2005", "in two thousand five"),
    ("2000", "two thousand"),
    ("2010", "twenty ten"),
    ("2024", "twenty twenty four"),
    ("1905", "nineteen oh five"),
    ("1900", "nineteen hundred"),
    ("1100", "eleven hundred"),
    ("2099", "twenty ninety nine"),
    ("1099", "one thousand ninety nine"),
    ("2100", "two thousand one hundred"),
    ("1,984", "one thousand nine hundred eighty four"),
    ("19845", "nineteen thousand eight hundred forty five"),
    ("the 1990s", "the nineteen nineties"),
    ("the '80s", "the eighties"),
    ("the 2000s", "the two thousands"),
    ("the 1900s", "the nineteen hundreds"),
    # currency
    ("$5.50", "five dollars fifty cents"),
    ("$5", "five dollars"),
    ("$1", "one dollar"),
    ("$1.01", "one dollar one cent"),
    ("$0.99", "ninety nine cents"),
    ("$5.00", "five dollars"),
    ("$1,000", "one thousand dollars"),
    ("$1.5 million", "one point five million dollars"),
    ("$5m", "five million dollars"),
    ("$2.5B", "two point five billion dollars"),
    ("£3.20", "three pounds twenty pence"),
    ("£1", "one pound"),
    ("€2.50", "two euros fifty cents"),
    ("5€", "five euros"),
    ("¥100", "one hundred yen"),
    # percent
    ("50%", "fifty percent"),
    ("3.5 %", "three point five percent"),
    ("-2%", "minus two percent"),
    # times
    ("3:30", "three thirty"),
    ("at 3:05 pm", "at three oh five p m"),
    ("3:00", "three o'clock"),
    ("15:45", "fifteen forty five"),
    ("15:00", "fifteen hundred"),
    ("10am", "ten a m"),
    ("7 p.m.", "seven p m"),
    ("12:00 AM", "twelve a m"),
    # fractions
    ("1/2", "one half"),
    ("3/4", "three quarters"),
    ("2/3", "two thirds"),
    ("24/7", "twenty four seven"),
    ("2½ cups", "two and one half cups"),
    ("½", "one half"),
    # abbreviations
    ("Mr. Smith", "mister smith"),
    ("Mrs Jones", "missus jones"),
    ("Ms. Smith", "miss smith"),
    ("10 ms", "ten ms"),
    ("it took 10 ms.", "it took ten ms"),
    ("Dr. Who", "doctor who"),
    ("Mulholland Dr.", "mulholland drive"),
    ("St. Louis", "saint louis"),
    ("Main St.", "main street"),
    ("42nd St", "forty second street"),
    ("ST LOUIS", "saint louis"),
    ("John Smith Jr.", "john smith junior"),
    ("Sr. Ramirez", "senior ramirez"),
    ("Prof. Plum", "professor plum"),
    ("Mt. Everest", "mount everest"),
    ("cats vs. dogs", "cats versus dogs"),
    ("apples, pears, etc.", "apples pears et cetera"),
    ("e.g. this", "for example this"),
    ("i.e. that", "that is that"),
    ("No. 5", "number five"),
    ("#1 hit", "number one hit"),
    ("I said no.", "i said no"),
    # symbols
    ("rock & roll", "rock and roll"),
    ("me@home", "me at home"),
    ("C++ = fun", "c plus plus equals fun"),
    ("a % sign", "a percent sign"),
    ("30°", "thirty degrees"),
    # letters next to digits
    ("MP3", "mp three"),
    ("3D", "three d"),
    ("covid19", "covid nineteen"),
    ("", ""),
    ("!!! ...", ""),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalized_output_is_stable(raw: str, expected: str) -> None:
    assert is_normalized(expected)
    assert normalize_text(expected) == expected


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (10, "ten"),
        (19, "nineteen"),
        (20, "twenty"),
        (70, "seventy"),
        (101, "one hundred one"),
        (1000, "one thousand"),
        (1001, "one thousand one"),
        (10000, "ten thousand"),
        (1_000_001, "one million one"),
        (-1234, "minus one thousand two hundred thirty four"),
        (7_000_000_000, "seven billion"),
        (2_000_000_000_000, "two trillion"),
        (10**33, "one decillion"),
    ],
)
def test_number_to_words(n: int, words: str) -> None:
    assert number_to_words(n) == words


def test_number_to_words_beyond_scale_words_reads_digits() -> None:
    assert number_to_words(10**36) == " ".join(["one"] + ["zero"] * 36)


@pytest.mark.parametrize("bad", [1.5, "3", True, None])
def test_number_to_words_rejects_non_integers(bad: object) -> None:
    with pytest.raises(TypeError):
        number_to_words(bad)  # type: ignore[arg-type]


def test_ordinals_and_years() -> None:
    assert ordinal_to_words(1) == "first"
    assert ordinal_to_words(12) == "twelfth"
    assert ordinal_to_words(40) == "fortieth"
    assert ordinal_to_words(1_000_000) == "one millionth"
    assert year_to_words(1066) == "ten sixty six"
    assert year_to_words(2007) == "two thousand seven"
    assert year_to_words(2000) == "two thousand"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("", True),
        ("hello world", True),
        ("don't o'clock", True),
        ("Hello", False),
        ("hello  world", False),
        (" hello", False),
        ("hello ", False),
        ("'quoted'", False),
        ("dogs'", False),
        ("it's 5", False),
        ("a-b", False),
        ("caf\u00e9", False),
    ],
)
def test_is_normalized(text: str, ok: bool) -> None:
    assert is_normalized(text) is ok


def test_alphabet_constant() -> None:
    assert set(TEXT_ALPHABET) == set("abcdefghijklmnopqrstuvwxyz' ")
    assert len(TEXT_ALPHABET) == 28


def test_random_text_always_lands_in_the_alphabet() -> None:
    # Any input whatsoever must come out in the alphabet, and normalizing twice changes nothing.
    rng = random.Random(1234)
    pool = (
        "abcXYZ0123456789 .,;:!?'\"-–—/\\()[]$£€¥%&@#+=*_~^|<>`´’“”éüßæ½°\t\n日😀"
    )
    for _ in range(2000):
        raw = "".join(rng.choice(pool) for _ in range(rng.randint(0, 40)))
        out = normalize_text(raw)
        assert set(out) <= set(TEXT_ALPHABET), (raw, out)
        assert is_normalized(out), (raw, out)
        assert normalize_text(out) == out, (raw, out)


def test_no_digit_is_ever_lost() -> None:
    # Every digit of the input must be spoken: an unmatched digit would silently vanish.
    rng = random.Random(7)
    for _ in range(500):
        raw = "".join(rng.choice("0123456789.,:-/$% ") for _ in range(rng.randint(1, 20)))
        if any(c.isdigit() for c in raw):
            assert normalize_text(raw), raw


def test_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        normalize_text(None)  # type: ignore[arg-type]
