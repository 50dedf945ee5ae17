"""Components of a PSF-convolved Sersic mixture, with the ones the PSF blurs together merged.

A Sersic mixture of K scale-free Gaussians (amplitudes ``a_i``, variances
``v_i`` in units of r_eff^2, shape matrix ``T``) convolved with a PSF of M
Gaussians (``b_j``, centres ``mu_j``, covariances ``P_j``) has K x M
components ``flux a_i b_j N(v_i T + P_j)``.  Many of them are nearly the same
Gaussian, and rendering them separately costs time for nothing:

* **small galaxy components** (``v_i T << P_j``): for one PSF component, a
  run of the smallest galaxy components is replaced by one Gaussian of the
  same total amplitude and the amplitude-weighted mean variance (their second
  moments are kept);
* **wide galaxy components** (``v_i T >> P_j``): one galaxy component
  convolved with every PSF component is replaced by one Gaussian convolved
  with the PSF's moment-matched covariance ``sum_j b_j P_j / sum_j b_j``
  (only when the PSF components share one centre and have positive weights).

Merging Gaussians of one centre with moment-matched covariances changes the
profile at second order: replacing ``sum_k w_k N(C_k)`` by ``W N(C)``, ``C =
sum_k w_k C_k / W``, changes the value at the centre by ``(1/8) sum_k w_k
((C_k - C) : grad grad)^2 N(C)``, which is ``sum_k w_k kappa_k^2 N(C)(0)``
for ``C_k - C`` proportional to ``C`` (``kappa_k`` the largest ``|eigenvalue|``
of ``C^-1 (C_k - C)``; for other differences it is an estimate, checked by
the measurements below).  Runs are extended while this estimate stays below
``tolerance`` times the profile's peak, taken as ``sum_j |b_j| |sum_i a_i
N(v_i T + P_j)(0)|`` (the peak itself when the PSF components are concentric
with positive weights, an upper bound on it otherwise; the galaxy amplitudes
are summed with their signs, as below n ~ 0.6 the table's amplitudes
alternate and ``sum_i |a_i| ...`` overstates the peak up to ~100 times at n =
0.3): half of it for the wide merges, half shared among the PSF components
for the small ones.  Measured against the unmerged mixture on 64 x 64 and
128 x 128 stamps (n = 0.3-8, r_eff = 1.5-15 px, ellip 0 and 0.3, concentric
and offset 3-Gaussian PSFs and no PSF, tolerances 1e-5 to 1e-3): the largest
difference stays below the tolerance (at most 71% of it), and at n = 1-4 60
components become 31-41 (1e-5) or 26-35 (1e-4); below n = 0.5 few merge
(54-60 of 60 at 1e-5).

The merged model is a smooth function of the parameters between changes of
the grouping; where the grouping changes, the model jumps by less than the
tolerance.

This module computes the components and their derivatives with respect to
the model's seven parameters in one loop, compiled by Numba when it is
importable (the call costs a few microseconds; the same function runs as
plain Python without Numba).
"""

import math

import numpy as np

__all__ = ["exposure_components", "pixel_components", "sersic_components", "shape_terms",
           "table_coefficients"]


def _kappa(cxx, cxy, cyy, dxx, dxy, dyy):
    # largest |eigenvalue| of C^-1 D for C positive definite, D symmetric (2x2):
    # the roots of det(C) l^2 - b l + det(D) = 0
    det_c = cxx * cyy - cxy * cxy
    b = cxx * dyy + cyy * dxx - 2.0 * cxy * dxy
    disc = b * b - 4.0 * det_c * (dxx * dyy - dxy * dxy)
    return (abs(b) + math.sqrt(max(disc, 0.0))) / (2.0 * det_c)


def _peak(cxx, cxy, cyy):
    # the peak of a unit-flux Gaussian of covariance C
    return 1.0 / (2.0 * math.pi * math.sqrt(cxx * cyy - cxy * cxy))


def _shape_values(ellip, theta):
    # the 9 numbers of shape_terms, as a tuple (compiled too, for _build_pixels)
    c, s = math.cos(theta), math.sin(theta)
    q = 1.0 - ellip
    q2 = q * q
    cc, ss, cs = c * c, s * s, c * s
    return (cc + q2 * ss, cs * (1.0 - q2), ss + q2 * cc,
            -2.0 * q * ss, 2.0 * q * cs, -2.0 * q * cc,
            -2.0 * (1.0 - q2) * cs, (1.0 - q2) * (cc - ss), 2.0 * (1.0 - q2) * cs)


def _build(coeffs, t_n, flux, x_0, y_0, r_eff, source_shape, wcs_jac, pamp, pmean, pcov,
           tolerance, box, derivatives):
    # the shape matrix and its two derivatives in the image: J S J^T (J = wcs_jac)
    shape = np.empty(9)
    ja, jb, jc, jd = wcs_jac[0, 0], wcs_jac[0, 1], wcs_jac[1, 0], wcs_jac[1, 1]
    for u in range(3):
        sxx, sxy, syy = source_shape[3 * u], source_shape[3 * u + 1], source_shape[3 * u + 2]
        shape[3 * u] = ja * ja * sxx + 2.0 * ja * jb * sxy + jb * jb * syy
        shape[3 * u + 1] = ja * jc * sxx + (ja * jd + jb * jc) * sxy + jb * jd * syy
        shape[3 * u + 2] = jc * jc * sxx + 2.0 * jc * jd * sxy + jd * jd * syy
    # the table at n: amplitudes, variances and their n-derivatives from the cubic
    # coefficients of the amplitudes and log-variances (cubic_values, inlined)
    k_gal = coeffs.shape[1] // 2
    a = np.empty(k_gal)
    v = np.empty(k_gal)
    da = np.empty(k_gal)
    dv = np.empty(k_gal)
    for i in range(k_gal):
        for half in range(2):
            col = i + half * k_gal
            val = ((coeffs[0, col] * t_n + coeffs[1, col]) * t_n + coeffs[2, col]) * t_n \
                + coeffs[3, col]
            slope = (3.0 * t_n * coeffs[0, col] + 2.0 * coeffs[1, col]) * t_n + coeffs[2, col]
            if half == 0:
                a[i] = val
                da[i] = slope
            else:
                v[i] = math.exp(val)
                dv[i] = v[i] * slope
    m_psf = pamp.shape[0]
    r2 = r_eff * r_eff
    # the galaxy's covariance per unit variance: r_eff^2 times the image-frame shape
    txx, txy, tyy = r2 * shape[0], r2 * shape[1], r2 * shape[2]

    # the PSF's moment-matched covariance (for the wide merges), if allowed
    psum = 0.0
    pxx = pxy = pyy = 0.0
    concentric = m_psf > 1
    for j in range(m_psf):
        psum += pamp[j]
        pxx += pamp[j] * pcov[j, 0, 0]
        pxy += pamp[j] * 0.5 * (pcov[j, 0, 1] + pcov[j, 1, 0])
        pyy += pamp[j] * pcov[j, 1, 1]
        if pamp[j] <= 0.0 or pmean[j, 0] != pmean[0, 0] or pmean[j, 1] != pmean[0, 1]:
            concentric = False
    if concentric:
        pxx /= psum
        pxy /= psum
        pyy /= psum

    # tolerance budget: a fraction of the profile's peak (flux left out), bounded by
    # sum_j |b_j| |galaxy * N(P_j)| at its centre: the galaxy's amplitudes are summed
    # with their signs (below n ~ 0.6 they alternate, and sum_i |a_i| peak_i overstates
    # the peak up to ~100x); for concentric positive PSF components it is the peak
    peak = 0.0
    if tolerance > 0.0:
        for j in range(m_psf):
            centre = 0.0
            for i in range(k_gal):
                centre += a[i] * _peak(v[i] * txx + pcov[j, 0, 0] + box,
                                       v[i] * txy + 0.5 * (pcov[j, 0, 1] + pcov[j, 1, 0]),
                                       v[i] * tyy + pcov[j, 1, 1] + box)
            peak += abs(pamp[j] * centre)
    budget = tolerance * peak

    # wide merges: galaxy components i >= i_wide take the PSF's mean covariance
    i_wide = k_gal
    if concentric and tolerance > 0.0:
        used = 0.0
        for i in range(k_gal - 1, -1, -1):
            cxx = v[i] * txx + pxx + box
            cxy = v[i] * txy + pxy
            cyy = v[i] * tyy + pyy + box
            e = 0.0
            for j in range(m_psf):
                kap = _kappa(cxx, cxy, cyy, pcov[j, 0, 0] - pxx,
                             0.5 * (pcov[j, 0, 1] + pcov[j, 1, 0]) - pxy, pcov[j, 1, 1] - pyy)
                e += pamp[j] * kap * kap
            e *= abs(a[i]) * _peak(cxx, cxy, cyy)
            if used + e > 0.5 * budget:
                break
            used += e
            i_wide = i

    # small merges: per PSF component, galaxy components 0 .. run[j]-1 become one
    run = np.ones(m_psf, dtype=np.int64)
    if i_wide == 0:
        run[:] = 0
    elif tolerance > 0.0:
        for j in range(m_psf):
            pj_xy = 0.5 * (pcov[j, 0, 1] + pcov[j, 1, 0])
            s0 = a[0]
            s1 = a[0] * v[0]
            s2 = a[0] * v[0] * v[0]
            if a[0] <= 0.0:
                continue
            for i in range(1, i_wide):
                if a[i] <= 0.0:
                    break
                s0 += a[i]
                s1 += a[i] * v[i]
                s2 += a[i] * v[i] * v[i]
                vb = s1 / s0
                spread = max(s2 - s1 * vb, 0.0)
                cxx = vb * txx + pcov[j, 0, 0] + box
                cxy = vb * txy + pj_xy
                cyy = vb * tyy + pcov[j, 1, 1] + box
                kap = _kappa(cxx, cxy, cyy, txx, txy, tyy)
                e = abs(pamp[j]) * spread * kap * kap * _peak(cxx, cxy, cyy)
                if e > 0.5 * budget / m_psf:
                    break
                run[j] = i + 1

    n_out = (k_gal - i_wide) * (1 if concentric and i_wide < k_gal else m_psf)
    for j in range(m_psf):
        if i_wide > 0:
            n_out += 1 + (i_wide - run[j])
    amp = np.empty(n_out)
    mean = np.empty((n_out, 2))
    cov = np.empty((n_out, 2, 2))
    jac = np.zeros((n_out if derivatives else 0, 7, 6))

    # (alpha, nu, d alpha/dn, d nu/dn) of each output, then the PSF part
    out = 0
    for i in range(k_gal):
        wide = i >= i_wide and concentric
        for j in range(1 if wide else m_psf):
            if i < i_wide and i < run[j] - 1:
                continue                       # inside a run, emitted at its last member
            if i < i_wide and run[j] > 1 and i == run[j] - 1:
                s0 = 0.0
                s1 = 0.0
                sd0 = 0.0
                sd1 = 0.0
                for ii in range(run[j]):
                    s0 += a[ii]
                    s1 += a[ii] * v[ii]
                    sd0 += da[ii]
                    sd1 += da[ii] * v[ii] + a[ii] * dv[ii]
                alpha = s0
                nu = s1 / s0
                d_alpha = sd0
                d_nu = (sd1 - nu * sd0) / s0
            else:
                alpha, nu, d_alpha, d_nu = a[i], v[i], da[i], dv[i]
            if wide:
                beta, mx, my = psum, pmean[0, 0], pmean[0, 1]
                cxx0, cxy0, cyy0 = pxx, pxy, pyy
            else:
                beta, mx, my = pamp[j], pmean[j, 0], pmean[j, 1]
                cxx0 = pcov[j, 0, 0]
                cxy0 = 0.5 * (pcov[j, 0, 1] + pcov[j, 1, 0])
                cyy0 = pcov[j, 1, 1]
            amp[out] = flux * alpha * beta
            mean[out, 0] = x_0 + mx
            mean[out, 1] = y_0 + my
            cov[out, 0, 0] = nu * txx + cxx0
            cov[out, 0, 1] = cov[out, 1, 0] = nu * txy + cxy0
            cov[out, 1, 1] = nu * tyy + cyy0
            if derivatives:
                m = jac[out]
                m[0, 0] = alpha * beta
                m[4, 0] = flux * d_alpha * beta
                m[1, 1] = 1.0
                m[2, 2] = 1.0
                for t in range(3):
                    m[3, 3 + t] = 2.0 * r_eff * nu * shape[t]
                    m[4, 3 + t] = d_nu * r2 * shape[t]
                    m[5, 3 + t] = nu * r2 * shape[3 + t]
                    m[6, 3 + t] = nu * r2 * shape[6 + t]
            out += 1
    return amp, mean, cov, jac


def _build_many(p, sersic, term, flux_index, flux_scale, ra_index, dec_index, r_eff_index,
                ra_ref, dec_ref, cosd, pixel, wcs_jac, psf_start, pamp, pmean, pcov, coeffs, t_n,
                shapes, tolerance, box, derivatives):
    # every placed source of one exposure (see exposure_components)
    n_src = sersic.shape[0]
    k_gal = coeffs.shape[2] // 2
    n_max = 0
    for q in range(n_src):
        n_max += (psf_start[q + 1] - psf_start[q]) * (k_gal if sersic[q] else 1)
    amp = np.empty(n_max)
    mean = np.empty((n_max, 2))
    cov = np.empty((n_max, 2, 2))
    jac = np.zeros((n_max if derivatives else 0, 7, 6))
    starts = np.empty(n_src + 1, dtype=np.int64)
    out = 0
    for q in range(n_src):
        starts[q] = out
        flux = p[flux_index[q]] * flux_scale[q]
        north = (p[dec_index[q]] - dec_ref[q]) * 3600.0
        east = (p[ra_index[q]] - ra_ref[q]) * cosd[q] * 3600.0
        x_0 = pixel[q, 0] + wcs_jac[q, 0, 0] * north + wcs_jac[q, 0, 1] * east
        y_0 = pixel[q, 1] + wcs_jac[q, 1, 0] * north + wcs_jac[q, 1, 1] * east
        j0, j1 = psf_start[q], psf_start[q + 1]
        if sersic[q]:
            c = term[q]
            a, m, v, d = _build(coeffs[c], t_n[c], flux, x_0, y_0, p[r_eff_index[q]],
                                shapes[c], wcs_jac[q], pamp[j0:j1], pmean[j0:j1], pcov[j0:j1],
                                tolerance, box, derivatives)
            n = a.shape[0]
            amp[out:out + n] = a
            mean[out:out + n] = m
            cov[out:out + n] = v
            if derivatives:
                jac[out:out + n] = d
        else:
            n = j1 - j0
            for j in range(n):
                amp[out + j] = flux * pamp[j0 + j]
                mean[out + j, 0] = x_0 + pmean[j0 + j, 0]
                mean[out + j, 1] = y_0 + pmean[j0 + j, 1]
                cov[out + j] = pcov[j0 + j]
                if derivatives:
                    jac[out + j, 0, 0] = pamp[j0 + j]
                    jac[out + j, 1, 1] = 1.0
                    jac[out + j, 2, 2] = 1.0
        out += n
    starts[n_src] = out
    return amp[:out], mean[:out], cov[:out], jac[:out] if derivatives else jac, starts


def _build_pixels(coeffs, t_n, flux, x_0, y_0, r_eff, ellip, theta, pamp, pmean, pcov,
                  tolerance, box):
    # _build for a source in pixels, from ellip and theta: its components, no derivatives
    amp, mean, cov, _ = _build(coeffs, t_n, flux, x_0, y_0, r_eff,
                               np.array(_shape_values(ellip, theta)), np.eye(2), pamp, pmean,
                               pcov, tolerance, box, False)
    return amp, mean, cov


def _build_pixels_jac(coeffs, t_n, flux, x_0, y_0, r_eff, ellip, theta, pamp, pmean, pcov,
                      tolerance, box):
    # _build_pixels with the derivatives
    return _build(coeffs, t_n, flux, x_0, y_0, r_eff, np.array(_shape_values(ellip, theta)),
                  np.eye(2), pamp, pmean, pcov, tolerance, box, True)


try:
    import numba
except ImportError:                                    # pragma: no cover - numba is optional
    _compiled = _build
    _compiled_many = _build_many
else:
    _opts = {"cache": True, "error_model": "numpy", "nogil": True}
    _kappa = numba.njit(inline="always", **_opts)(_kappa)
    _peak = numba.njit(inline="always", **_opts)(_peak)
    _shape_values = numba.njit(inline="always", **_opts)(_shape_values)
    _build = _compiled = numba.njit(**_opts)(_build)
    _compiled_many = numba.njit(**_opts)(_build_many)
    _build_pixels = numba.njit(**_opts)(_build_pixels)
    _build_pixels_jac = numba.njit(**_opts)(_build_pixels_jac)


def exposure_components(p, pack, coeffs, t_n, shapes, tolerance, box, derivatives=False):
    """Components (and derivatives) of all the sources placed in one exposure, in one call.

    The sources are Sersic profiles (:func:`sersic_components`, on the sky
    through each source's local WCS Jacobian) and points (the PSF), with
    centres from the sky position offsets: ``(x, y) = pixel + J (north,
    east)``, offsets in arcsec from the reference point.

    Parameters
    ----------
    p : ndarray, shape (n_parameters,)
        The scene's parameter vector (flux, ra [deg], dec [deg], r_eff [arcsec]).
    pack : tuple
        Per placed source (Q of them): ``(sersic (Q,) bool, term (Q,) int
        (row of coeffs, t_n and shapes), flux_index, flux_scale, ra_index,
        dec_index, r_eff_index, ra_ref, dec_ref, cosd (Q,), pixel (Q, 2),
        wcs_jac (Q, 2, 2) [px / arcsec], psf_start (Q + 1,), psf_amp (M,),
        psf_mean (M, 2), psf_cov (M, 2, 2))``, the PSFs of source q being
        rows ``psf_start[q]:psf_start[q + 1]``.
    coeffs, t_n, shapes : ndarray, shapes (S, 4, 2K), (S,), (S, 9)
        The table's cubic coefficients, offsets and shape terms of each
        source (:func:`sersic_components`; rows of point sources unused).
    tolerance, box : float
        As for :func:`sersic_components`.
    derivatives : bool, optional

    Returns
    -------
    amp, mean, cov : ndarray, shapes (J,), (J, 2), (J, 2, 2)
    jac : ndarray, shape (J, 7, 6), only with ``derivatives``
    starts : ndarray, shape (Q + 1,)
        Source q's components are rows ``starts[q]:starts[q + 1]``.
    """
    amp, mean, cov, jac, starts = _compiled_many(
        p, *pack, coeffs, t_n, shapes, float(tolerance), float(box), bool(derivatives))
    return ((amp, mean, cov, jac) if derivatives else (amp, mean, cov)) + (starts,)


def shape_terms(ellip, theta):
    """The shape matrix of a Sersic profile and its derivatives, as 9 numbers.

    ``S = R(theta) diag(1, q^2) R(theta)^T`` with ``q = 1 - ellip``, ``theta``
    from +x counter-clockwise [rad]: ``(S_xx, S_xy, S_yy, dS/dellip (3),
    dS/dtheta (3))``, shape (9,).  The covariance of a component of variance
    ``v`` (units of r_eff^2) is ``v r_eff^2 S``.
    """
    return np.array(_shape_values(ellip, theta))


def sersic_components(coeffs, t_n, flux, x_0, y_0, r_eff, shape, psf, tolerance, box,
                      derivatives=False, wcs_jac=None):
    """Amplitudes, centres, covariances (and derivatives) of a PSF-convolved Sersic mixture.

    Parameters
    ----------
    coeffs : ndarray, shape (4, 2K)
        Cubic coefficients (of t^3, t^2, t, 1) of the K amplitudes and the K
        log-variances (units of r_eff^2) on the table's interval holding n
        (:meth:`~astromix.models.sersic_table.SersicMixtureTable.interval`).
    t_n : float
        n minus the interval's first node.
    flux, x_0, y_0, r_eff : float
        Total flux, centre [px] and r_eff [units of the shape matrix: px, or
        arcsec with a shape matrix in px^2 / arcsec^2].
    shape : ndarray, shape (9,)
        The shape matrix and its derivatives with respect to ellip and theta
        (:func:`shape_terms`), in the source's frame.
    psf : tuple of ndarray or None
        The unit-flux PSF's amplitudes (M,), centres (M, 2) [px] and
        covariances (M, 2, 2) [px^2], float64 (None: a point, no convolution).
    tolerance : float
        Merge while the estimated change stays below this fraction of the
        profile's peak (0: no merging, the K x M components in the order of
        :meth:`GaussianMixture.convolve`, galaxy index slowest).
    box : float
        Pixel-box variance added when estimating peaks [px^2] (1/12, or 0 for
        point sampling).
    derivatives : bool, optional
        Also return d (amp, x, y, C_xx, C_xy, C_yy) / d (flux, x_0, y_0,
        r_eff, n, ellip, theta) per component.
    wcs_jac : ndarray, shape (2, 2), optional
        Pixels per unit of the source's frame (a local WCS Jacobian, px per
        arcsec for a source on the sky): the shape matrices are ``J S J^T``
        in the image.  Default: the identity (a source in pixels).

    Returns
    -------
    amp : ndarray, shape (J,)
    mean : ndarray, shape (J, 2)
    cov : ndarray, shape (J, 2, 2)
    jac : ndarray, shape (J, 7, 6), only with ``derivatives``
    """
    if psf is None:
        pamp, pmean, pcov = _POINT
    else:
        pamp, pmean, pcov = psf
    amp, mean, cov, jac = _compiled(coeffs, float(t_n), float(flux), float(x_0), float(y_0),
                                    float(r_eff), shape, _IDENTITY if wcs_jac is None else wcs_jac,
                                    pamp, pmean, pcov, float(tolerance), float(box),
                                    bool(derivatives))
    return (amp, mean, cov, jac) if derivatives else (amp, mean, cov)


def pixel_components(coeffs, t_n, flux, x_0, y_0, r_eff, ellip, theta, psf, tolerance, box,
                     derivatives=False):
    """:func:`sersic_components` for a source in pixels, from ``ellip`` and ``theta``.

    The same components, the shape matrix (:func:`shape_terms`) computed in
    the compiled call: the path of :class:`~astromix.models.SersicMixture`,
    one Numba dispatch per evaluation (its arguments are those of
    :func:`sersic_components`, ``shape`` replaced by ``ellip`` (1 - b/a) and
    ``theta`` [rad], and no ``wcs_jac``).

    Returns
    -------
    amp, mean, cov : ndarray, shapes (J,), (J, 2), (J, 2, 2)
    jac : ndarray, shape (J, 7, 6), only with ``derivatives``
    """
    pamp, pmean, pcov = _POINT if psf is None else psf
    args = (coeffs, float(t_n), float(flux), float(x_0), float(y_0), float(r_eff),
            float(ellip), float(theta), pamp, pmean, pcov, float(tolerance), float(box))
    return _build_pixels_jac(*args) if derivatives else _build_pixels(*args)


def table_coefficients(amp, var, damp, dvar):
    """``(coeffs, 0.0)`` for :func:`sersic_components` from a table's values at one n.

    For tables without :meth:`interval` (analytic stand-ins in tests): the
    constant and linear coefficients reproduce the values and n-derivatives
    at ``t_n = 0``.
    """
    amp, var = np.asarray(amp, dtype=np.float64), np.asarray(var, dtype=np.float64)
    coeffs = np.zeros((4, 2 * amp.size))
    coeffs[3] = np.concatenate([amp, np.log(var)])
    coeffs[2] = np.concatenate([np.asarray(damp, dtype=np.float64),
                                np.asarray(dvar, dtype=np.float64) / var])
    return coeffs, 0.0


_POINT = (np.ones(1), np.zeros((1, 2)), np.zeros((1, 2, 2)))
_IDENTITY = np.eye(2)
