"""Report currencies: ISO 4217 codes and conversion at configured rates, in Decimal (money is never
a float).

The list is ISO 4217's active codes (List One, 2025, with XCG and ZWG), minus ``XXX`` (no currency)
and ``XTS`` (testing): a typo such as ``"UDS"`` in ``[report] currency`` is refused instead of
printed on a page a controller signs. Kept here as data rather than adding a dependency (pycountry,
babel) for one lookup.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

ISO_4217 = frozenset("""
AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP BYN BZD
CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP
GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW
KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN
NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL
SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES
VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XUA YER ZAR ZMW ZWG ZWL
""".split())

DEFAULT = "USD"


def is_code(code: object) -> bool:
    """Whether ``code`` is an ISO 4217 code as written (three capitals)."""
    return isinstance(code, str) and code in ISO_4217


def rate(value: object) -> Decimal | None:
    """A conversion rate from the config: a positive finite decimal written as a string (or an
    integer); None for anything else, floats included (TOML floats are binary: ``1.1`` is not 1.1)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() and d > 0 else None


def missing_rates(used: set[str], report: str, rates: dict[str, Decimal]) -> list[str]:
    """The currencies in ``used`` that cannot be converted to ``report`` (no rate), sorted."""
    return sorted(c for c in used if c != report and c not in rates)


def convert(amount: Decimal, code: str, report: str, rates: dict[str, Decimal]) -> Decimal:
    """``amount`` in ``code`` expressed in ``report`` (rates are units of the report currency per
    unit of ``code``), to the cent."""
    if code == report:
        return amount
    return (amount * rates[code]).quantize(Decimal("0.01"))
