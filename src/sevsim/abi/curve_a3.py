"""Point arithmetic on the curves y^2 = x^3 - 3x + b over P-384's field, for any b.

The formulas never use b, which is what made SEV firmware before 0.17 build 11 exploitable
(CVE-2019-9836): it multiplied whatever point it was handed by its PDH key, so a point of
small order on another curve came back as one of few values. The vulnerable firmware model
and the attack that exploits it share this arithmetic; honest ECDH goes through
`cryptography`, which checks the point first.
"""

from __future__ import annotations

P = 2**384 - 2**128 - 2**96 + 2**32 - 1  # P-384's field
Jacobian = tuple[int, int, int]  # (X, Y, Z) for the affine (X/Z^2, Y/Z^3); Z = 0 at infinity
INFINITY: Jacobian = (1, 1, 0)


def double(pt: Jacobian) -> Jacobian:
    """2P (Jacobian coordinates, a = -3)."""
    x, y, z = pt
    if z == 0 or y == 0:
        return INFINITY
    zz = z * z % P
    m = 3 * (x - zz) * (x + zz) % P
    yy = y * y % P
    s = 4 * x * yy % P
    x3 = (m * m - 2 * s) % P
    return x3, (m * (s - x3) - 8 * yy * yy) % P, 2 * y * z % P


def add(p1: Jacobian, p2: Jacobian) -> Jacobian:
    """P1 + P2 (Jacobian coordinates, a = -3)."""
    x1, y1, z1 = p1
    x2, y2, z2 = p2
    if z1 == 0:
        return p2
    if z2 == 0:
        return p1
    z1z1, z2z2 = z1 * z1 % P, z2 * z2 % P
    u1, u2 = x1 * z2z2 % P, x2 * z1z1 % P
    s1, s2 = y1 * z2 * z2z2 % P, y2 * z1 * z1z1 % P
    if u1 == u2:
        return double(p1) if s1 == s2 else INFINITY
    h, r = (u2 - u1) % P, (s2 - s1) % P
    hh = h * h % P
    hhh = h * hh % P
    v = u1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return x3, (r * (v - x3) - s1 * hhh) % P, h * z1 * z2 % P


def add_affine(p1: Jacobian, x2: int, y2: int) -> Jacobian:
    """P1 + (x2, y2), the second point affine (mixed addition: fewer multiplications)."""
    x1, y1, z1 = p1
    if z1 == 0:
        return x2, y2, 1
    z1z1 = z1 * z1 % P
    u2, s2 = x2 * z1z1 % P, y2 * z1 * z1z1 % P
    if x1 == u2:
        return double(p1) if y1 == s2 else INFINITY
    h, r = (u2 - x1) % P, (s2 - y1) % P
    hh = h * h % P
    hhh = h * hh % P
    v = x1 * hh % P
    x3 = (r * r - hhh - 2 * v) % P
    return x3, (r * (v - x3) - y1 * hhh) % P, h * z1 % P


def multiply(k: int, pt: Jacobian) -> Jacobian:
    """The multiple k * pt, by double-and-add."""
    result = INFINITY
    while k:
        if k & 1:
            result = add(result, pt)
        pt = double(pt)
        k >>= 1
    return result


def xs(points: list[Jacobian]) -> list[bytes]:
    """The affine X of each point as the firmware derives keys from it (48 bytes, zero at
    infinity), with one inversion for all of them (Montgomery's trick)."""
    prefix, acc = [], 1
    for _, _, z in points:
        prefix.append(acc)
        acc = acc * (z or 1) % P
    inverse = pow(acc, -1, P)
    out = [b""] * len(points)
    for i in range(len(points) - 1, -1, -1):
        x, _, z = points[i]
        zinv = inverse * prefix[i] % P
        inverse = inverse * (z or 1) % P
        out[i] = bytes(48) if z == 0 else (x * zinv * zinv % P).to_bytes(48, "big")
    return out


def affine(pt: Jacobian) -> tuple[int, int]:
    """(x, y) of a finite point."""
    x, y, z = pt
    zinv = pow(z, -1, P)
    return x * zinv * zinv % P, y * zinv * zinv * zinv % P


def raw_ecdh_x(scalar: int, x: int, y: int) -> bytes:
    """X of scalar * (x, y) without any check on the point, as the vulnerable firmware derived
    its shared secret; the point at infinity gives an all-zero X."""
    return xs([multiply(scalar, (x % P, y % P, 1))])[0]
