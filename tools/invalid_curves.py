"""Print curves y^2 = x^3 - 3x + b over P-384's field with known orders, as the table of
src/sevsim/attacks/catalog/f01_invalid_curve.py keeps them (b in 96 hex digits, then the
trace t with its sign: the order is p + 1 - t), for the CVE-2019-9836 attack (F1).

Complex multiplication: for each discriminant -D (D < 2000) with few reduced forms, where p
splits (Cornacchia's 4p = t^2 + D v^2 has a solution), the Hilbert class polynomial (from
the j-invariants of the reduced forms, with mpmath) has roots j mod p; a root with
b^2 = 4(j - 1728)/j a square gives the curve with a = -3, and b, -b are the two twists,
of orders p + 1 -+ t. Each order is checked by multiplying a point by it.

The last rows of the shipped table are random curves counted with PARI/GP's ellsea (cypari,
`pari.ellsea(pari.ellinit([-3, b], p))`), kept for their small prime factors; they take
minutes each, so this script does not redo them.

    pip install sympy   # mpmath comes with it; dev-time only
    python tools/invalid_curves.py > curves.txt
"""

from __future__ import annotations

import math

import mpmath

P = 2**384 - 2**128 - 2**96 + 2**32 - 1
mpmath.mp.dps = 400


def forms(d: int) -> list[tuple[int, int, int]]:
    """The reduced primitive binary quadratic forms of discriminant d < 0."""
    out = []
    a = 1
    while 3 * a * a <= -d:
        for b in range(-a + 1, a + 1):
            if (b * b - d) % (4 * a) == 0:
                c = (b * b - d) // (4 * a)
                if c >= a and math.gcd(math.gcd(a, abs(b)), c) == 1 and not (b < 0 and a == c):
                    out.append((a, b, c))
        a += 1
    return out


def hilbert(d: int) -> list[int]:
    """The Hilbert class polynomial's integer coefficients, highest first."""
    poly = [mpmath.mpc(1)]
    for a, b, _ in forms(d):
        j = 1728 * mpmath.kleinj((-b + mpmath.sqrt(mpmath.mpf(d))) / (2 * a))
        poly = [x - j * y for x, y in zip([*poly, 0], [0, *poly], strict=True)]
    return [int(mpmath.nint(c.real)) for c in poly]


def sqrt_p(n: int) -> int | None:
    """A square root mod p (p = 3 mod 4), or None."""
    n %= P
    return pow(n, (P + 1) // 4, P) if pow(n, (P - 1) // 2, P) == 1 else None


def trace(d: int) -> int | None:
    """t with 4p = t^2 + |d| v^2 (Cornacchia), or None when p does not split so."""
    if d % 4 == 0:
        r = sqrt_p(d // 4)
        if r is None:
            return None
        a, b, limit, m, k = P, r, math.isqrt(P), P, -d // 4
    else:
        r = sqrt_p(d)
        if r is None:
            return None
        if (r - d) % 2:
            r = P - r
        a, b, limit, m, k = 2 * P, r, math.isqrt(4 * P), 4 * P, -d
    while b > limit:
        a, b = b, a % b
    rest = m - b * b
    if rest % k or math.isqrt(rest // k) ** 2 != rest // k:
        return None
    return 2 * b if d % 4 == 0 else b


def roots(coeffs: list[int]) -> list[int]:
    """The roots mod p of a polynomial (sympy's factorisation over GF(p))."""
    from sympy.polys.domains import ZZ
    from sympy.polys.galoistools import gf_factor_sqf

    _, factors = gf_factor_sqf([c % P for c in coeffs], P, ZZ)
    return [(-f[1]) % P for f in factors if len(f) == 2]


def multiply(k: int, point: tuple[int, int]) -> tuple[int, int] | None:
    """k * point on the curve with a = -3 (affine; None is infinity)."""
    def add(p1: tuple[int, int] | None, p2: tuple[int, int] | None) -> tuple[int, int] | None:
        if p1 is None or p2 is None:
            return p1 or p2
        (x1, y1), (x2, y2) = p1, p2
        if x1 == x2 and (y1 + y2) % P == 0:
            return None
        if p1 == p2:
            slope = (3 * x1 * x1 - 3) * pow(2 * y1, -1, P) % P
        else:
            slope = (y2 - y1) * pow(x2 - x1, -1, P) % P
        x3 = (slope * slope - x1 - x2) % P
        return x3, (slope * (x1 - x3) - y1) % P

    result: tuple[int, int] | None = None
    addend: tuple[int, int] | None = point
    while k:
        if k & 1:
            result = add(result, addend)
        addend = add(addend, addend)
        k >>= 1
    return result


def main() -> None:
    """Print b and t of every curve found, two lines each."""
    for d in range(-3, -2000, -1):
        if d % 4 not in (0, 1) or not 0 < len(forms(d)) <= 8:
            continue
        t = trace(d)
        if t is None:
            continue
        for j in roots(hilbert(d)):
            b = sqrt_p(4 * (j - 1728) * pow(j, -1, P)) if j not in (0, 1728) else None
            if b is None:
                continue
            for twist in (b, P - b):
                x = next(x for x in range(1, 1000) if sqrt_p(x ** 3 - 3 * x + twist))
                point = (x, sqrt_p(x ** 3 - 3 * x + twist) or 0)
                tr = next(tr for tr in (t, -t) if multiply(P + 1 - tr, point) is None)
                print(f"{twist:096x}\n{'-' if tr < 0 else '+'}{abs(tr):x}")
            break


if __name__ == "__main__":
    main()
