"""Go's float64 arithmetic where Python's differs: the parts of Go's math package PromQL results depend on.

Why: promtool (Go) compares test results bit for bit, so a function must round like Go's math package,
not like C's libm: Log (FreeBSD's e_log.c), Log2/Log10 (with 1/Ln2 and 1/Ln10 rounded once at compile
time), Atan2 (Cephes), and IEEE division by zero and NaN-propagating Min/Max, which Python raises on or
treats differently.
"""

from __future__ import annotations

import math
from decimal import Decimal


def go_min(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return min(a, b)


def go_max(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return max(a, b)


def go_div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:
        if math.isnan(a) or a == 0:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def go_mod(a: float, b: float) -> float:
    try:
        return math.fmod(a, b)
    except ValueError:
        return math.nan


def go_pow(a: float, b: float) -> float:
    try:
        result = a ** b
    except ZeroDivisionError:
        return math.inf
    except OverflowError:
        return math.inf if a > 0 or float(b).is_integer() and int(b) % 2 == 0 else -math.inf
    if isinstance(result, complex):
        return math.nan
    return float(result)


def kahan_inc(inc: float, total: float, c: float) -> tuple[float, float]:
    t = total + inc
    if abs(total) >= abs(inc):
        c += (total - t) + inc
    else:
        c += (inc - t) + total
    return t, c


# Go computes `1 / Ln2` and `1 / Ln10` exactly at compile time, then rounds once: these are those float64s
# (dividing by the rounded logs in Python gives a different last bit).
_INV_LN2 = 1.4426950408889634


_INV_LN10 = 0.4342944819032518


def go_log(x: float) -> float:
    """Go's math.Log (FreeBSD e_log.c, as Go runs it on amd64): C's log differs from it in the last place."""
    if math.isnan(x) or x == math.inf:
        return x
    if x < 0:
        return math.nan
    if x == 0:
        return -math.inf
    ln2_hi, ln2_lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10
    l1, l2, l3 = 6.666666666666735130e-01, 3.999999999940941908e-01, 2.857142874366239149e-01
    l4, l5, l6, l7 = 2.222219843214978396e-01, 1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01
    f1, ki = math.frexp(x)
    if f1 < math.sqrt(2) / 2:
        f1 *= 2
        ki -= 1
    f = f1 - 1
    k = float(ki)
    s = f / (2 + f)
    s2 = s * s
    s4 = s2 * s2
    t1 = s2 * (l1 + s4 * (l3 + s4 * (l5 + s4 * l7)))
    t2 = s4 * (l2 + s4 * (l4 + s4 * l6))
    r = t1 + t2
    hfsq = 0.5 * f * f
    return k * ln2_hi - ((hfsq - (s * (hfsq + r) + k * ln2_lo)) - f)


def go_log2(value: float) -> float:
    """Go's math.Log2: exact for powers of two, else Log(frac) / Ln2 + exp (not C's log2)."""
    if value <= 0 or math.isnan(value) or math.isinf(value):
        return go_log(value)
    frac, exp = math.frexp(value)
    if frac == 0.5:
        return float(exp - 1)
    return go_log(frac) * _INV_LN2 + float(exp)


def go_log10(value: float) -> float:
    """Go's math.Log10 = Log(x) * (1/Ln10), which differs from C's log10 in the last place."""
    return go_log(value) * _INV_LN10


def _go_xatan(x: float) -> float:
    """Cephes' atan series on [0, 0.66], as Go's math package evaluates it."""
    p0, p1, p2, p3, p4 = (-8.750608600031904122785e-01, -1.615753718733365076637e+01, -7.500855792314704667340e+01,
                          -1.228866684490136173410e+02, -6.485021904942025371773e+01)
    q0, q1, q2, q3, q4 = (2.485846490142306297962e+01, 1.650270098316988542046e+02, 4.328810604912902668951e+02,
                          4.853903996359136964868e+02, 1.945506571482613964425e+02)
    z = x * x
    z = z * ((((p0 * z + p1) * z + p2) * z + p3) * z + p4) / (((((z + q0) * z + q1) * z + q2) * z + q3) * z + q4)
    return x * z + x


def _go_satan(x: float) -> float:
    more_bits = 6.123233995736765886130e-17
    if x <= 0.66:
        return _go_xatan(x)
    if x > 2.41421356237309504880:  # tan(3*pi/8)
        return math.pi / 2 - _go_xatan(1 / x) + more_bits
    return math.pi / 4 + _go_xatan((x - 1) / (x + 1)) + 0.5 * more_bits


def go_atan2(y: float, x: float) -> float:
    """Go's math.Atan2 (Cephes atan, quadrant by the signs), which PromQL's atan2 operator uses."""
    if math.isnan(y) or math.isnan(x):
        return math.nan
    if y == 0:
        return math.copysign(0.0, y) if x >= 0 and math.copysign(1.0, x) > 0 else math.copysign(math.pi, y)
    if x == 0:
        return math.copysign(math.pi / 2, y)
    if math.isinf(x):
        if x > 0:
            return math.copysign(math.pi / 4, y) if math.isinf(y) else math.copysign(0.0, y)
        return math.copysign(3 * math.pi / 4, y) if math.isinf(y) else math.copysign(math.pi, y)
    if math.isinf(y):
        return math.copysign(math.pi / 2, y)
    ratio = y / x
    q = ratio if ratio == 0 else (_go_satan(ratio) if ratio > 0 else -_go_satan(-ratio))
    if x < 0:
        return q + math.pi if q <= 0 else q - math.pi
    return q


def go_round_to(value: float, to_nearest: float) -> float:
    inverse = go_div(1.0, to_nearest)
    try:
        return math.floor(value * inverse + 0.5) / inverse
    except (ValueError, OverflowError):
        return value * inverse / inverse


def go_format_f(value: float) -> str:
    """Go's strconv.FormatFloat(v, 'f', -1, 64): "1", "0.25", "NaN", "+Inf"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text
