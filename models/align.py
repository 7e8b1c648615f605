"""Face alignment as pure functions: dlib's 5-point face chip and insightface's ArcFace crop.

Two alignments live here, one per embedding network:

* ``dlib_chip_details`` / ``extract_dlib_chip`` reproduce ``dlib.get_face_chip_details`` and
  ``dlib.get_face_chip`` for the 5-point landmark model (outer and inner corner of each eye, base
  of the nose). The dlib ResNet was trained on chips made exactly this way, and a close-but-not-
  equal crop (``cv2.warpAffine``) moves its embeddings by up to 0.05 per component, so this is a
  faithful port rather than an approximation:

  - The geometry follows dlib's floating-point operations in dlib's order (scalar division of
    a matrix as multiplication by the reciprocal, as dlib's expression templates do; its own
    SVD, the Numerical Recipes ``svdcmp`` dlib uses when built without LAPACK, as the
    ``dlib-bin`` wheel is). That matters: a flat patch of value ``v`` interpolates to ``v`` or
    to ``v - 1e-14`` depending on the last bits of the weights, and dlib truncates. The chip
    rectangle and angle still differ from dlib's in the last bit or two (a few 1e-13 px, 1e-16
    rad; the SVD results differ from the compiled dlib's at that level for reasons not found),
    which on the shared face set changes no pixel; in stress tests (random chip geometry,
    extreme upsampling of a 7-pixel face) a few values come out one grey level off.
  - dlib first shrinks the source with ``pyramid_down<2>`` (a separable [1 4 6 4 1] filter and
    2:1 decimation, integer arithmetic, truncating division by 256) as many times as the chip's
    scale calls for, then samples bilinearly, truncating to ``uint8`` and painting black every
    pixel whose 2x2 neighbourhood is not wholly inside the (shrunk) image.
  - dlib only ever filters the rectangle around the chip's rotated footprint (grown by a margin
    that covers the filter taps of every level) and this port filters exactly that rectangle, so
    the pyramid's decimation grid is dlib's and the cost scales with the face, not the photo.
    Large inputs are filtered in strips so that memory stays bounded.

* ``arcface_transform`` / ``extract_arcface_chip`` reproduce insightface's ``norm_crop``: a
  least-squares similarity (Umeyama) from the five detector landmarks to the ArcFace template,
  then ``cv2.warpAffine`` with a black border. The estimate is in double precision; insightface
  (through skimage, on float32 landmarks) lands within ~1e-7 relative of it, which moves about
  0.03% of crop values by one grey level.

Landmark arrays are ``(5, 2)`` of ``(x, y)`` in image pixels. Images are ``H x W x 3`` ``uint8``
in RGB order (any channel order works; channels are processed independently).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "ARCFACE_TEMPLATE_112",
    "DLIB_TEMPLATE_5",
    "ChipDetails",
    "arcface_template",
    "arcface_transform",
    "dlib_chip_details",
    "extract_arcface_chip",
    "extract_dlib_chip",
    "extract_image_chip",
    "umeyama_similarity",
]

FloatArray = npt.NDArray[np.float64]
ImageArray = npt.NDArray[np.uint8]

#: dlib's mean-face positions of the 5 landmarks on the unit square (``get_face_chip_details``
#: in dlib/image_transforms/interpolation.h), in the 5-point predictor's part order.
DLIB_TEMPLATE_5: Final[tuple[tuple[float, float], ...]] = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)

#: insightface's ``arcface_dst`` for a 112x112 crop: left eye, right eye, nose tip, left and
#: right mouth corner. insightface stores it as float32; these are those float32 values.
ARCFACE_TEMPLATE_112: Final[tuple[tuple[float, float], ...]] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

_EPS: Final = sys.float_info.epsilon
_SVD_MAX_ITER: Final = 300
# Output rows per pyramid strip: bounds the uint16 temporaries to ~1000 rows of the input.
_PYR_STRIP_ROWS: Final = 256

Matrix = list[list[float]]


# ---------------------------------------------------------------------------------------------
# Chip geometry (dlib's chip_details)


@dataclass(frozen=True, slots=True)
class ChipDetails:
    """Where a chip lies in the source image: dlib's ``chip_details``.

    The chip is the rectangle ``(left, top, right, bottom)`` (dlib's inclusive ``drectangle``,
    so its width is ``right - left + 1``) rotated by ``angle`` radians about its centre, and
    resampled to ``rows x cols`` pixels. ``scale`` is source pixels per chip pixel.
    """

    left: float
    top: float
    right: float
    bottom: float
    angle: float
    scale: float
    rows: int
    cols: int

    @property
    def center(self) -> tuple[float, float]:
        """Centre of the chip in source-image pixels (dlib's ``center(rect)``)."""
        return ((self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0)

    @property
    def width(self) -> float:
        return _rect_width(self.rect)

    @property
    def height(self) -> float:
        return _rect_height(self.rect)

    @property
    def rect(self) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` as dlib reports it."""
        return (self.left, self.top, self.right, self.bottom)


Rect = tuple[float, float, float, float]


def _rect_empty(r: Rect) -> bool:
    return r[1] > r[3] or r[0] > r[2]


def _rect_width(r: Rect) -> float:
    return 0.0 if _rect_empty(r) else r[2] - r[0] + 1


def _rect_height(r: Rect) -> float:
    return 0.0 if _rect_empty(r) else r[3] - r[1] + 1


def _rect_area(r: Rect) -> float:
    return _rect_width(r) * _rect_height(r)


def _rect_center(r: Rect) -> tuple[float, float]:
    return ((r[0] + r[2]) / 2.0, (r[1] + r[3]) / 2.0)


def _rect_down(r: Rect) -> Rect:
    """``pyramid_down<2>::rect_down``: each corner maps to ``p/2 - (1.25, 0.75)``."""
    return (r[0] / 2.0 - 1.25, r[1] / 2.0 - 0.75, r[2] / 2.0 - 1.25, r[3] / 2.0 - 0.75)


def _rotate_point(
    center: tuple[float, float], p: tuple[float, float], sin_a: float, cos_a: float
) -> tuple[float, float]:
    """dlib's ``rotate_point``: ``point_rotator(angle)(p - center) + center``."""
    px = p[0] - center[0]
    py = p[1] - center[1]
    x = cos_a * px - sin_a * py
    y = sin_a * px + cos_a * py
    return (x + center[0], y + center[1])


def _sign(a: float, b: float) -> float:
    return -abs(a) if b < 0 else abs(a)


def _pythag(a: float, b: float) -> float:
    absa = abs(a)
    absb = abs(b)
    if absa > absb:
        val = absb / absa
        val *= val
        return absa * math.sqrt(1.0 + val)
    if absb == 0.0:
        return 0.0
    val = absa / absb
    val *= val
    return absb * math.sqrt(1.0 + val)


def _svdcmp(matrix: Matrix) -> tuple[Matrix, list[float], Matrix]:
    """dlib's ``svd3`` without LAPACK (``nric::svdcmp``), operation for operation.

    Returns ``(u, w, v)`` with ``matrix == u @ diag(w) @ v.T``. The statement order (and so
    every rounding) follows dlib so that the results are bit-identical to dlib's.
    """
    a = [list(row) for row in matrix]
    m = len(a)
    n = len(a[0])
    w = [0.0] * n
    v = [[0.0] * n for _ in range(n)]
    rv1 = [0.0] * n
    eps = _EPS
    g = scale = anorm = 0.0
    s = f = h = c = x = y = z = 0.0
    l = nm = 0  # noqa: E741 - dlib's (and Numerical Recipes') names

    # Householder reduction to bidiagonal form.
    for i in range(n):
        l = i + 1  # noqa: E741
        rv1[i] = scale * g
        g = s = scale = 0.0
        if i < m:
            for k in range(i, m):
                scale += abs(a[k][i])
            if scale != 0.0:
                for k in range(i, m):
                    a[k][i] /= scale
                    s += a[k][i] * a[k][i]
                f = a[i][i]
                g = -_sign(math.sqrt(s), f)
                h = f * g - s
                a[i][i] = f - g
                for j in range(l, n):
                    s = 0.0
                    for k in range(i, m):
                        s += a[k][i] * a[k][j]
                    f = s / h
                    for k in range(i, m):
                        a[k][j] += f * a[k][i]
                for k in range(i, m):
                    a[k][i] *= scale
        w[i] = scale * g
        g = s = scale = 0.0
        if i < m and i < n - 1:
            for k in range(l, n):
                scale += abs(a[i][k])
            if scale != 0.0:
                for k in range(l, n):
                    a[i][k] /= scale
                    s += a[i][k] * a[i][k]
                f = a[i][l]
                g = -_sign(math.sqrt(s), f)
                h = f * g - s
                a[i][l] = f - g
                for k in range(l, n):
                    rv1[k] = a[i][k] / h
                for j in range(l, m):
                    s = 0.0
                    for k in range(l, n):
                        s += a[j][k] * a[i][k]
                    for k in range(l, n):
                        a[j][k] += s * rv1[k]
                for k in range(l, n):
                    a[i][k] *= scale
        anorm = max(anorm, abs(w[i]) + abs(rv1[i]))

    # Accumulation of right-hand transformations.
    for i in range(n - 1, -1, -1):
        if i < n - 1:
            if g != 0:
                for j in range(l, n):
                    v[j][i] = (a[i][j] / a[i][l]) / g
                for j in range(l, n):
                    s = 0.0
                    for k in range(l, n):
                        s += a[i][k] * v[k][j]
                    for k in range(l, n):
                        v[k][j] += s * v[k][i]
            for j in range(l, n):
                v[i][j] = 0.0
                v[j][i] = 0.0
        v[i][i] = 1.0
        g = rv1[i]
        l = i  # noqa: E741

    # Accumulation of left-hand transformations.
    for i in range(min(m, n) - 1, -1, -1):
        l = i + 1  # noqa: E741
        g = w[i]
        for j in range(l, n):
            a[i][j] = 0.0
        if g != 0:
            g = 1.0 / g
            for j in range(l, n):
                s = 0.0
                for k in range(l, m):
                    s += a[k][i] * a[k][j]
                f = (s / a[i][i]) * g
                for k in range(i, m):
                    a[k][j] += f * a[k][i]
            for j in range(i, m):
                a[j][i] *= g
        else:
            for j in range(i, m):
                a[j][i] = 0.0
        a[i][i] += 1.0

    # Diagonalisation of the bidiagonal form.
    for k in range(n - 1, -1, -1):
        for its in range(1, _SVD_MAX_ITER + 1):
            flag = True
            l = k  # noqa: E741
            while l >= 1:
                nm = l - 1
                if abs(rv1[l]) <= eps * anorm:
                    flag = False
                    break
                if abs(w[nm]) <= eps * anorm:
                    break
                l -= 1  # noqa: E741
            if flag:
                c = 0.0
                s = 1.0
                for i in range(l, k + 1):
                    f = s * rv1[i]
                    rv1[i] = c * rv1[i]
                    if abs(f) <= eps * anorm:
                        break
                    g = w[i]
                    h = _pythag(f, g)
                    w[i] = h
                    h = 1.0 / h
                    c = g * h
                    s = -f * h
                    for j in range(m):
                        y = a[j][nm]
                        z = a[j][i]
                        a[j][nm] = y * c + z * s
                        a[j][i] = z * c - y * s
            z = w[k]
            if l == k:
                if z < 0.0:
                    w[k] = -z
                    for j in range(n):
                        v[j][k] = -v[j][k]
                break
            if its == _SVD_MAX_ITER:
                raise ArithmeticError("svd did not converge")
            x = w[l]
            nm = k - 1
            y = w[nm]
            g = rv1[nm]
            h = rv1[k]
            f = ((y - z) * (y + z) + (g - h) * (g + h)) / (2.0 * h * y)
            g = _pythag(f, 1.0)
            f = ((x - z) * (x + z) + h * ((y / (f + _sign(g, f))) - h)) / x
            c = s = 1.0
            for j in range(l, nm + 1):
                i = j + 1
                g = rv1[i]
                y = w[i]
                h = s * g
                g = c * g
                z = _pythag(f, h)
                rv1[j] = z
                c = f / z
                s = h / z
                f = x * c + g * s
                g = g * c - x * s
                h = y * s
                y *= c
                for jj in range(n):
                    x = v[jj][j]
                    z = v[jj][i]
                    v[jj][j] = x * c + z * s
                    v[jj][i] = z * c - x * s
                z = _pythag(f, h)
                w[j] = z
                if z != 0:
                    z = 1.0 / z
                    c = f * z
                    s = h * z
                f = c * g + s * y
                x = c * y - s * g
                for jj in range(m):
                    y = a[jj][j]
                    z = a[jj][i]
                    a[jj][j] = y * c + z * s
                    a[jj][i] = z * c - y * s
            rv1[l] = 0.0
            rv1[k] = f
            w[k] = x
    return a, w, v


def _matmul(lhs: Matrix, rhs: Matrix) -> Matrix:
    """dlib's matrix product: each entry summed left to right, starting from the first term."""
    inner = len(rhs)
    out: Matrix = []
    for row in lhs:
        out_row = []
        for col in range(len(rhs[0])):
            acc = row[0] * rhs[0][col]
            for k in range(1, inner):
                acc += row[k] * rhs[k][col]
            out_row.append(acc)
        out.append(out_row)
    return out


def _transpose(mat: Matrix) -> Matrix:
    return [list(col) for col in zip(*mat, strict=True)]


def _pinv_square(p: Matrix) -> Matrix:
    """dlib's ``pinv`` for a square matrix: SVD, drop tiny singular values, V W^-1 U^T."""
    u, w, v = _svdcmp(p)
    size = len(p)
    wmax = w[0]
    for value in w[1:]:
        wmax = max(wmax, value)
    eps = _EPS * size * wmax
    recip = [1.0 / val if (val >= eps or val <= -eps) and val != 0 else 0.0 for val in w]
    scaled = [[v[r][c] * recip[c] for c in range(size)] for r in range(size)]
    return _matmul(scaled, _transpose(u))


@lru_cache(maxsize=16)
def _chip_corner_pinv(rows: int, cols: int) -> tuple[tuple[float, ...], ...]:
    """``pinv(P)`` for the chip corners dlib's ``find_affine_transform`` is given.

    The corners are ``(0, 0)``, ``(cols - 1, 0)`` and ``(0, rows - 1)``; ``P`` stacks them as
    homogeneous columns. It only depends on the chip size, so it is computed once.
    """
    from_pts = ((0.0, 0.0), (float(cols - 1), 0.0), (0.0, float(rows - 1)))
    p = [[pt[0] for pt in from_pts], [pt[1] for pt in from_pts], [1.0, 1.0, 1.0]]
    return tuple(tuple(row) for row in _pinv_square(p))


def _find_similarity_transform(
    from_points: list[tuple[float, float]], to_points: list[tuple[float, float]]
) -> tuple[Matrix, tuple[float, float]]:
    """dlib's ``find_similarity_transform`` (Umeyama, eqs. 34-43), in dlib's operation order.

    Returns ``(M, t)`` such that ``to ~= M @ from + t``.
    """
    count = float(len(from_points))
    mfx = mfy = mtx = mty = 0.0
    for (fx, fy), (tx, ty) in zip(from_points, to_points, strict=True):
        mfx += fx
        mfy += fy
        mtx += tx
        mty += ty
    mfx /= count
    mfy /= count
    mtx /= count
    mty /= count

    sigma_from = sigma_to = 0.0
    cov = [[0.0, 0.0], [0.0, 0.0]]
    for (fx, fy), (tx, ty) in zip(from_points, to_points, strict=True):
        dfx = fx - mfx
        dfy = fy - mfy
        dtx = tx - mtx
        dty = ty - mty
        sigma_from += dfx * dfx + dfy * dfy
        sigma_to += dtx * dtx + dty * dty
        cov[0][0] += dtx * dfx
        cov[0][1] += dtx * dfy
        cov[1][0] += dty * dfx
        cov[1][1] += dty * dfy
    sigma_from /= count
    sigma_to /= count
    # dlib divides a floating-point matrix by a scalar by multiplying with its reciprocal.
    inv_count = 1.0 / count
    cov = [
        [cov[0][0] * inv_count, cov[0][1] * inv_count],
        [cov[1][0] * inv_count, cov[1][1] * inv_count],
    ]

    u, w, v = _svdcmp(cov)
    s = [[1.0, 0.0], [0.0, 1.0]]

    def det2(mat: Matrix) -> float:
        return mat[0][0] * mat[1][1] - mat[0][1] * mat[1][0]

    det_cov = det2(cov)
    if det_cov < 0 or (det_cov == 0 and det2(u) * det2(v) < 0):
        if w[1] < w[0]:
            s[1][1] = -1.0
        else:
            s[0][0] = -1.0

    r = _matmul(_matmul(u, s), _transpose(v))
    c = 1.0
    if sigma_from != 0:
        d_s = _matmul([[w[0], 0.0], [0.0, w[1]]], s)
        trace = 0.0 + d_s[0][0] + d_s[1][1]
        c = 1.0 / sigma_from * trace
    # t = mean_to - c*r*mean_from; dlib moves the scalar outside the product.
    t = (
        mtx - (r[0][0] * mfx + r[0][1] * mfy) * c,
        mty - (r[1][0] * mfx + r[1][1] * mfy) * c,
    )
    mat = [[r[0][0] * c, r[0][1] * c], [r[1][0] * c, r[1][1] * c]]
    return mat, t


def _as_landmarks(landmarks: npt.ArrayLike) -> FloatArray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"expected (5, 2) landmarks, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise ValueError("landmarks must be finite")
    return pts


def dlib_chip_details(
    landmarks: npt.ArrayLike, size: int = 150, padding: float = 0.25
) -> ChipDetails:
    """dlib's ``get_face_chip_details`` for the 5-point landmark model.

    ``landmarks`` are the five parts of ``shape_predictor_5_face_landmarks`` in its order (dlib
    hands them out as integer pixel positions; pass those to reproduce dlib exactly).
    """
    if size <= 0:
        raise ValueError("size must be positive")
    if not padding >= 0:
        raise ValueError("padding must be >= 0")
    pts = _as_landmarks(landmarks)
    # (padding + p) / (2*padding + 1) is a dlib matrix expression, so the division is a
    # multiplication by the reciprocal.
    inv_denom = 1.0 / (2 * padding + 1)
    fsize = float(size)
    from_points = [
        (((tx + padding) * inv_denom) * fsize, ((ty + padding) * inv_denom) * fsize)
        for tx, ty in DLIB_TEMPLATE_5
    ]
    to_points = [(float(x), float(y)) for x, y in pts]
    mat, t = _find_similarity_transform(from_points, to_points)

    # chip_details(chip_points, img_points, dims): angle and scale from M*(1, 0); the rectangle
    # is centred on where the chip's centre lands.
    px = mat[0][0] * 1.0 + mat[0][1] * 0.0
    py = mat[1][0] * 1.0 + mat[1][1] * 0.0
    angle = math.atan2(py, px)
    scale = math.sqrt(px * px + py * py)
    cx_chip = size / 2.0
    cy_chip = size / 2.0
    cx = (mat[0][0] * cx_chip + mat[0][1] * cy_chip) + t[0]
    cy = (mat[1][0] * cx_chip + mat[1][1] * cy_chip) + t[1]
    width = size * scale - 1
    height = size * scale - 1
    return ChipDetails(
        left=cx - width / 2,
        top=cy - height / 2,
        right=cx + width / 2,
        bottom=cy + height / 2,
        angle=angle,
        scale=scale,
        rows=size,
        cols=size,
    )


# ---------------------------------------------------------------------------------------------
# Chip extraction (dlib's extract_image_chip)


def _pyramid_down(src: ImageArray) -> ImageArray:
    """One level of dlib's ``pyramid_down<2>`` on an ``H x W x C`` uint8 image.

    Output pixel ``(i, j)`` is the [1 4 6 4 1] x [1 4 6 4 1] weighted sum ``S`` of input rows
    ``2i..2i+4`` and columns ``2j..2j+4``, divided by 256 with truncation (``S >> 8``); the
    output is ``((H-3)//2) x ((W-3)//2)`` and empty when either side is 8 or less.

    ``cv2.pyrDown`` uses the same kernel but centres output ``k`` on input ``2k`` and rounds
    ``S/256`` to nearest. Feeding it the pixels times 256 (still within uint16) makes its
    rounded result exactly ``S`` (at most 65280, so no saturation), and dlib's pixel ``(i, j)``
    is OpenCV's ``(i+1, j+1)``, whose support lies wholly inside the input, so OpenCV's border
    handling never enters. Rows go in strips to bound memory on very large inputs.
    """
    height, width, channels = src.shape
    if height <= 8 or width <= 8:
        return np.zeros((0, 0, channels), dtype=np.uint8)
    out_h = (height - 3) // 2
    out_w = (width - 3) // 2
    out = np.empty((out_h, out_w, channels), dtype=np.uint8)
    for r0 in range(0, out_h, _PYR_STRIP_ROWS):
        r1 = min(out_h, r0 + _PYR_STRIP_ROWS)
        # dlib output rows r0..r1-1 read input rows 2*r0 .. 2*r1+2.
        block = src[2 * r0 : 2 * r1 + 3].astype(np.uint16)
        block <<= 8
        sums = cv2.pyrDown(block)
        np.right_shift(sums[1 : r1 - r0 + 1, 1 : out_w + 1], 8, out=out[r0:r1], casting="unsafe")
    return out


def _bilinear_sample(
    img: ImageArray, affine: tuple[float, float, float, float, float, float], rows: int, cols: int
) -> ImageArray:
    """dlib's ``transform_image`` with ``interpolate_bilinear`` and a black background.

    Chip pixel ``(r, c)`` samples ``img`` at ``(m00*c + m01*r + b0, m10*c + m11*r + b1)``; the
    value is the bilinear blend in double precision truncated to uint8, or 0 when any of the four
    neighbours falls outside ``img``. The arithmetic is dlib's, operation for operation.
    """
    m00, m01, b0, m10, m11, b1 = affine
    channels = img.shape[2]
    img_h, img_w = img.shape[:2]
    if img_h < 2 or img_w < 2:
        return np.zeros((rows, cols, channels), dtype=np.uint8)
    cs = np.arange(cols, dtype=np.float64)[None, :]
    rs = np.arange(rows, dtype=np.float64)[:, None]
    x = (m00 * cs + m01 * rs) + b0
    y = (m10 * cs + m11 * rs) + b1
    xf = np.floor(x)
    yf = np.floor(y)
    valid = (xf >= 0) & (yf >= 0) & (xf < img_w - 1) & (yf < img_h - 1)
    lr = x - xf
    tb = y - yf
    # Samples outside the image read pixel 0 and are blacked out at the end.
    idx = np.where(valid, yf * img_w + xf, 0.0).astype(np.intp)
    # Channel planes, so that every operation below runs over long contiguous rows.
    planes = np.ascontiguousarray(img.transpose(2, 0, 1)).reshape(channels, img_h * img_w)
    # (1-tb)*((1-lr)*tl + lr*tr) + tb*((1-lr)*bl + lr*br), in double, in dlib's order.
    inv_lr = 1 - lr
    top = np.multiply(planes.take(idx, axis=1), inv_lr, dtype=np.float64)
    top += np.multiply(planes.take(idx + 1, axis=1), lr, dtype=np.float64)
    bottom = np.multiply(planes.take(idx + img_w, axis=1), inv_lr, dtype=np.float64)
    bottom += np.multiply(planes.take(idx + (img_w + 1), axis=1), lr, dtype=np.float64)
    top *= 1 - tb
    bottom *= tb
    top += bottom
    out = np.empty((rows, cols, channels), dtype=np.uint8)
    # Float to uint8 assignment truncates, as dlib's assign_pixel does; a convex blend of
    # values <= 255 never rounds up past 255.
    out.transpose(2, 0, 1)[...] = top
    out[~valid] = 0
    return out


def _to_rectangle(r: Rect) -> tuple[int, int, int, int]:
    """dlib's ``drectangle`` -> ``rectangle`` conversion: each side rounded half up."""
    return (
        math.floor(r[0] + 0.5),
        math.floor(r[1] + 0.5),
        math.floor(r[2] + 0.5),
        math.floor(r[3] + 0.5),
    )


def _basic_extract(image: ImageArray, details: ChipDetails) -> ImageArray:
    """dlib's ``basic_extract_image_chip``: a plain copy, zero outside the image."""
    left, top, right, bottom = _to_rectangle(details.rect)
    out_h = max(0, bottom - top + 1)
    out_w = max(0, right - left + 1)
    out = np.zeros((out_h, out_w, image.shape[2]), dtype=np.uint8)
    img_h, img_w = image.shape[:2]
    y0, y1 = max(top, 0), min(bottom, img_h - 1)
    x0, x1 = max(left, 0), min(right, img_w - 1)
    if y0 <= y1 and x0 <= x1:
        out[y0 - top : y1 - top + 1, x0 - left : x1 - left + 1] = image[y0 : y1 + 1, x0 : x1 + 1]
    return out


def _check_image(image: ImageArray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")


def extract_image_chip(image: ImageArray, details: ChipDetails) -> ImageArray:
    """dlib's ``extract_image_chip(img, details, chip)`` with its default bilinear sampling."""
    _check_image(image)
    rows, cols = details.rows, details.cols
    rect = details.rect
    # Chips with no rotation and no scaling are a plain copy in dlib.
    if details.angle == 0 and rows == _rect_height(rect) and cols == _rect_width(rect):
        return _basic_extract(image, details)

    size = float(rows * cols)
    img_h, img_w = image.shape[:2]

    # How deep the pyramid must go, and the margin its filters need at full resolution.
    depth = 0
    grow = 2.0
    down = _rect_down(rect)
    while _rect_area(down) > size:
        down = _rect_down(down)
        depth += 1
        grow = grow * 2 + 2

    sin_a = math.sin(details.angle)
    cos_a = math.cos(details.angle)
    center = _rect_center(rect)
    corners = [(rect[0], rect[1]), (rect[2], rect[1]), (rect[0], rect[3]), (rect[2], rect[3])]
    rotated = [_rotate_point(center, p, sin_a, cos_a) for p in corners]
    grown = (
        min(p[0] for p in rotated) - grow,
        min(p[1] for p in rotated) - grow,
        max(p[0] for p in rotated) + grow,
        max(p[1] for p in rotated) + grow,
    )
    clipped = (
        max(grown[0], 0.0),
        max(grown[1], 0.0),
        min(grown[2], float(img_w - 1)),
        min(grown[3], float(img_h - 1)),
    )
    bb_left, bb_top, bb_right, bb_bottom = _to_rectangle(clipped)
    if bb_top > bb_bottom or bb_left > bb_right:
        return np.zeros((rows, cols, image.shape[2]), dtype=np.uint8)
    # Everything dlib filters and samples lies inside this crop, and the decimation grid of
    # every pyramid level is anchored at its top-left corner, exactly as in dlib.
    level_img: ImageArray = image[bb_top : bb_bottom + 1, bb_left : bb_right + 1]

    # Which level to sample: the chip rectangle in crop coordinates, shrunk until one more
    # level would make it smaller than the chip.
    local: Rect = (rect[0] - bb_left, rect[1] - bb_top, rect[2] - bb_left, rect[3] - bb_top)
    level = -1
    while _rect_area(_rect_down(local)) > size:
        level += 1
        local = _rect_down(local)
    for _ in range(level + 1):
        level_img = _pyramid_down(level_img)

    # find_affine_transform from the chip's corners to the rotated rectangle at that level.
    local_center = _rect_center(local)
    to_pts = [
        _rotate_point(local_center, (local[0], local[1]), sin_a, cos_a),
        _rotate_point(local_center, (local[2], local[1]), sin_a, cos_a),
        _rotate_point(local_center, (local[0], local[3]), sin_a, cos_a),
    ]
    pinv = _chip_corner_pinv(rows, cols)
    q = [[p[0] for p in to_pts], [p[1] for p in to_pts]]
    m = _matmul(q, [list(row) for row in pinv])
    affine = (m[0][0], m[0][1], m[0][2], m[1][0], m[1][1], m[1][2])
    return _bilinear_sample(level_img, affine, rows, cols)


def extract_dlib_chip(
    image: ImageArray, landmarks: npt.ArrayLike, size: int = 150, padding: float = 0.25
) -> ImageArray:
    """dlib's ``get_face_chip(img, shape, size, padding)`` for 5-point landmarks.

    Returns a ``size x size x 3`` uint8 chip, pixel for pixel what dlib returns.
    """
    return extract_image_chip(image, dlib_chip_details(landmarks, size, padding))


# ---------------------------------------------------------------------------------------------
# ArcFace alignment (insightface's norm_crop)


def arcface_template(size: int = 112) -> FloatArray:
    """The ArcFace 5-point template for a ``size x size`` crop, scaled as insightface does.

    Sizes that are multiples of 112 scale the 112 template; multiples of 128 scale it by
    ``size/128`` and shift it right by ``8 * size/128``. insightface does this in float32.
    """
    if size <= 0 or (size % 112 != 0 and size % 128 != 0):
        raise ValueError("size must be a multiple of 112 or 128")
    dst = np.array(ARCFACE_TEMPLATE_112, dtype=np.float32)
    if size % 112 == 0:
        dst = dst * np.float32(size / 112.0)
    else:
        ratio = size / 128.0
        dst = dst * np.float32(ratio)
        dst[:, 0] += np.float32(8.0 * ratio)
    return dst.astype(np.float64)


def umeyama_similarity(src: npt.ArrayLike, dst: npt.ArrayLike) -> FloatArray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    This is Umeyama's (1991) estimate restricted to proper rotations, which in two dimensions
    has a closed form: with the centred points written as complex numbers ``z`` and ``z'``, the
    optimal ``s*exp(i*theta)`` is ``sum(conj(z) * z') / sum(|z|^2)``. It is the same transform
    ``skimage.transform.SimilarityTransform.estimate`` (which insightface uses) finds by SVD.
    Returns the ``2 x 3`` matrix ``[s*R | t]`` with ``dst ~= s*R @ src + t``.
    """
    a = np.asarray(src, dtype=np.float64)
    b = np.asarray(dst, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 2:
        raise ValueError("src and dst must both be (N, 2) with N >= 2")
    mean_a = a.mean(axis=0)
    mean_b = b.mean(axis=0)
    ca = a - mean_a
    cb = b - mean_b
    var_a = float(np.sum(ca * ca))
    if var_a == 0.0:
        raise ValueError("degenerate landmarks: all points coincide")
    cos_part = float(np.sum(ca[:, 0] * cb[:, 0] + ca[:, 1] * cb[:, 1])) / var_a
    sin_part = float(np.sum(ca[:, 0] * cb[:, 1] - ca[:, 1] * cb[:, 0])) / var_a
    out = np.empty((2, 3), dtype=np.float64)
    out[0, 0] = cos_part
    out[0, 1] = -sin_part
    out[1, 0] = sin_part
    out[1, 1] = cos_part
    out[:, 2] = mean_b - out[:, :2] @ mean_a
    return out


def arcface_transform(landmarks: npt.ArrayLike, size: int = 112) -> FloatArray:
    """The ``2 x 3`` affine (image -> crop) insightface's ``estimate_norm`` computes."""
    return umeyama_similarity(_as_landmarks(landmarks), arcface_template(size))


def extract_arcface_chip(
    image: ImageArray, landmarks: npt.ArrayLike, size: int = 112
) -> ImageArray:
    """insightface's ``norm_crop``: the ``size x size`` ArcFace crop, black outside the image."""
    matrix = arcface_transform(landmarks, size)
    warped = cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
    return np.asarray(warped, dtype=np.uint8)
