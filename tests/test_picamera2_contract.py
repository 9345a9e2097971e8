"""Contract tests: the picamera2 calls in hw/camera.py against the real picamera2 source.

picamera2 cannot be imported off a Raspberry Pi (its ``__init__`` imports libcamera), so its wheel
is read as a zip file: the signatures we call are checked with :mod:`ast`, and ``converters.py``
(which needs only numpy) is imported under the fake ``picamera2`` package (tests/fake_picamera2) to
run :func:`hw.camera.yuv420_frame` on a real YUV420 buffer.  The fake's own signatures are checked
against the real ones here too, so that tests/test_picamera2_camera.py calls what a Pi would.

The wheel is the newest release in the range of setup.cfg's ``pi`` extra, downloaded by the tests
themselves on their first run and cached (tests/picamera2_wheel.py), or the one at
``PICAMERA2_WHEEL``.  When it cannot be had (offline) these tests are skipped saying so, except
under CI (``CI=true``), where they fail.
"""

import ast
import concurrent.futures
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hw.camera
from hw.camera import yuv420_frame

FAKE_SOURCE = Path(__file__).parent / "fake_picamera2" / "picamera2" / "__init__.py"
# The lores stream: 640x480 YUV420 with padded rows, as the ISP delivers it.
WIDTH, HEIGHT, STRIDE = 640, 480, 704


@pytest.fixture
def wheel(picamera2_wheel):
    return picamera2_wheel


def parse(wheel, module: str) -> ast.Module:
    return ast.parse(wheel.read(f"picamera2/{module}.py"))


def methods(tree: ast.Module, class_name: str) -> dict[str, ast.FunctionDef]:
    """The methods of ``class_name`` by name: their implementations, not ``@overload`` stubs."""
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    assert len(classes) == 1, f"class {class_name} not found"
    return {
        n.name: n
        for n in classes[0].body
        if isinstance(n, ast.FunctionDef)
        and not any(ast.unparse(d).endswith("overload") for d in n.decorator_list)
    }


def method(tree: ast.Module, class_name: str, name: str) -> ast.FunctionDef:
    found = methods(tree, class_name)
    assert name in found, f"{class_name}.{name} not found"
    return found[name]


def arg_names(func: ast.FunctionDef) -> list[str]:
    a = func.args
    return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]


def required_args(func: ast.FunctionDef) -> set[str]:
    """The parameters without a default value."""
    a = func.args
    positional = a.posonlyargs + a.args
    required = positional[: len(positional) - len(a.defaults)]
    required += [p for p, default in zip(a.kwonlyargs, a.kw_defaults, strict=True) if default is None]
    return {p.arg for p in required}


def calls_to(func: ast.FunctionDef, name: str) -> list[ast.Call]:
    """The calls ``<something>.name(...)`` inside ``func``."""
    return [
        n
        for n in ast.walk(func)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == name
    ]


def passes_wait(call: ast.Call) -> bool:
    """Whether ``call`` passes the local ``wait`` on, positionally or as ``wait=wait``."""
    values = call.args + [k.value for k in call.keywords if k.arg == "wait"]
    return any(isinstance(v, ast.Name) and v.id == "wait" for v in values)


def parameters(func: ast.FunctionDef) -> list[tuple[str, str, bool]]:
    """``(name, kind, has a default)`` for each parameter of ``func`` in order, ``*args`` and
    ``**kwargs`` included."""
    a = func.args
    positional = a.posonlyargs + a.args
    first_default = len(positional) - len(a.defaults)
    found = [
        (p.arg, "positional-only" if p in a.posonlyargs else "positional", i >= first_default)
        for i, p in enumerate(positional)
    ]
    if a.vararg:
        found.append((a.vararg.arg, "*args", False))
    found += [
        (p.arg, "keyword-only", d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
    ]
    if a.kwarg:
        found.append((a.kwarg.arg, "**kwargs", False))
    return found


def calling_decorators(func: ast.FunctionDef) -> set[str]:
    """The decorators that change how ``func`` is called (a property is read, not called)."""
    names = {ast.unparse(d).removeprefix("contextlib.") for d in func.decorator_list}
    return names & {"property", "contextmanager", "classmethod", "staticmethod"}


# Every picamera2 call in hw/camera.py: the positional arguments we pass (by the parameter name they
# bind to) and the keyword arguments.
CALLS = [
    ("picamera2", "Picamera2", "__init__", ["camera_num"], []),
    (
        "picamera2",
        "Picamera2",
        "create_still_configuration",
        [],
        ["main", "lores", "buffer_count", "controls"],
    ),
    ("picamera2", "Picamera2", "configure", ["camera_config"], []),
    ("picamera2", "Picamera2", "start", [], []),
    ("picamera2", "Picamera2", "close", [], []),
    ("picamera2", "Picamera2", "captured_request", [], ["wait", "flush"]),
    ("picamera2", "Picamera2", "autofocus_cycle", [], ["wait"]),
    ("request", "CompletedRequest", "save", ["name", "file_output"], ["format"]),
    ("request", "CompletedRequest", "make_array", ["name"], []),
    ("request", "CompletedRequest", "get_metadata", [], []),
]
# The attributes of a Picamera2 that hw/camera.py reads without calling them.
ATTRIBUTES = {"camera_controls", "camera_properties", "options", "sensor_resolution"}


def picamera2_uses_in_our_code() -> tuple[set[tuple[str, str]], set[str]]:
    """What :class:`hw.camera.Picamera2Camera` does with picamera2, read from its source: the
    methods it calls as ``(class, name)``, and the Picamera2 attributes it reads."""
    tree = ast.parse(Path(hw.camera.__file__).read_text())
    ours = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Picamera2Camera")
    receivers = {"self._picam2": "Picamera2", "picam2": "Picamera2", "request": "CompletedRequest"}
    called, read = set(), set()
    for node in ast.walk(ours):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "Picamera2":
            called.add(("Picamera2", "__init__"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = receivers.get(ast.unparse(node.func.value))
            if receiver:
                called.add((receiver, node.func.attr))
    for node in ast.walk(ours):
        if isinstance(node, ast.Attribute) and ast.unparse(node.value) == "self._picam2":
            read.add(node.attr)
    return called, read - {name for _, name in called}


def test_calls_table_lists_everything_our_camera_does_with_picamera2():
    called, read = picamera2_uses_in_our_code()
    assert called == {(c[1], c[2]) for c in CALLS}
    assert read == ATTRIBUTES


@pytest.mark.parametrize(
    ("module", "class_name", "name", "positional", "keywords"),
    CALLS,
    ids=[f"{c[1]}.{c[2]}" for c in CALLS],
)
def test_signature_accepts_our_call(wheel, module, class_name, name, positional, keywords):
    func = method(parse(wheel, module), class_name, name)
    params = arg_names(func)
    assert params[0] == "self"
    assert params[1 : 1 + len(positional)] == positional
    assert set(keywords) <= set(params)
    assert required_args(func) - {"self"} <= set(positional) | set(keywords)


def test_save_format_is_the_third_parameter(wheel):
    save = method(parse(wheel, "request"), "CompletedRequest", "save")
    assert arg_names(save)[:4] == ["self", "name", "file_output", "format"]


def test_captured_request_is_a_contextmanager(wheel):
    func = method(parse(wheel, "picamera2"), "Picamera2", "captured_request")
    decorators = {ast.unparse(d) for d in func.decorator_list}
    assert decorators & {"contextlib.contextmanager", "contextmanager"}


def test_options_is_a_dict_set_once_at_construction(wheel):
    """We set ``options["quality"]`` after configure(): nothing may replace the dict afterwards."""
    picamera2 = methods(parse(wheel, "picamera2"), "Picamera2")
    # 0.3.38 assigns it in _reset_flags(), which __init__ calls: look one call deep.
    called = {
        ast.unparse(n.func).removeprefix("self.")
        for n in ast.walk(picamera2["__init__"])
        if isinstance(n, ast.Call)
    }
    assignments = [
        (name, n.value)
        for name, func in picamera2.items()
        for n in ast.walk(func)
        if isinstance(n, ast.Assign) and any(ast.unparse(t) == "self.options" for t in n.targets)
    ]
    assert len(assignments) == 1
    name, value = assignments[0]
    assert name == "__init__" or name in called
    assert isinstance(value, ast.Dict)
    # The JPEG encoding of CompletedRequest.save must read the key we set.
    assert 'self.picam2.options.get("quality"' in wheel.read("picamera2/request.py").decode()


def test_numeric_wait_raises_timeout_error(wheel):
    """hw/camera.py turns TimeoutError into CameraTimeout: check that a numeric ``wait`` gets there."""
    tree = parse(wheel, "picamera2")
    captured = method(tree, "Picamera2", "captured_request")
    assert any(passes_wait(c) for c in calls_to(captured, "capture_request"))
    capture = method(tree, "Picamera2", "capture_request")
    assert any(passes_wait(c) for c in calls_to(capture, "dispatch_functions"))

    dispatch = method(tree, "Picamera2", "dispatch_functions")
    statements = [ast.unparse(s) for s in dispatch.body]
    assert "timeout = wait" in statements
    last = dispatch.body[-1]
    assert isinstance(last, ast.Return)
    assert "job.get_result(timeout=timeout)" in ast.unparse(last)

    get_result = method(parse(wheel, "job"), "Job", "get_result")
    assert ast.unparse(get_result.body[-1]) == "return self._future.result(timeout=timeout)"
    assert "from concurrent.futures import" in wheel.read("picamera2/job.py").decode()
    # Since Python 3.11 concurrent.futures' timeout is the builtin TimeoutError we catch.
    assert concurrent.futures.TimeoutError is TimeoutError


def test_yuv420_frame_of_a_photo(fake_picamera2, tmp_path, samples):
    with Image.open(samples / "camera-traps" / "megadetector_pheasant_web.jpg") as photo:
        image = photo.convert("RGB").resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)

    frame = yuv420_frame(fake_picamera2.yuv420_buffer(image, STRIDE), WIDTH, HEIGHT)

    assert sys.modules["picamera2.converters"].__file__ == str(tmp_path / "converters.py")
    assert isinstance(frame, Image.Image)
    assert (frame.mode, frame.size) == ("RGB", (WIDTH // 2, HEIGHT // 2))
    expected = np.asarray(image.resize(frame.size, Image.Resampling.BOX), dtype=float)
    got = np.asarray(frame, dtype=float)
    assert np.abs(got.mean(axis=(0, 1)) - expected.mean(axis=(0, 1))).max() < 8
    # Pixel by pixel too, so a skewed or shifted image (a wrong stride) fails as well.
    assert np.abs(got - expected).mean() < 12


@pytest.mark.parametrize(
    ("colour", "channel"),
    [((255, 0, 0), 0), ((0, 255, 0), 1), ((0, 0, 255), 2)],
    ids=["red", "green", "blue"],
)
def test_yuv420_frame_keeps_primary_colours(fake_picamera2, colour, channel):
    image = Image.new("RGB", (WIDTH, HEIGHT), colour)

    pixels = np.asarray(yuv420_frame(fake_picamera2.yuv420_buffer(image, STRIDE), WIDTH, HEIGHT))

    assert pixels.shape == (HEIGHT // 2, WIDTH // 2, 3)
    others = [c for c in range(3) if c != channel]
    assert (pixels[..., channel] > 200).all()
    assert (pixels[..., others] < 60).all()


def test_camera_properties_is_a_dict_property_keyed_by_libcamera_names(wheel):
    """We read ``camera_properties.get("Model")`` (the sensor, e.g. imx708) for EXIF Model."""
    func = method(parse(wheel, "picamera2"), "Picamera2", "camera_properties")
    assert any(ast.unparse(d) == "property" for d in func.decorator_list)
    source = wheel.read("picamera2/picamera2.py").decode()
    assert "self.camera_properties_[k.name] =" in source  # libcamera's property names: Model, ...


def test_sensor_resolution_is_the_largest_sensor_mode(wheel):
    """We refuse a photo larger than ``sensor_resolution``: it must be set when the camera opens
    (``__init__`` -> ``_open_camera`` -> ``_initialize_camera``) to the largest of the sensor's raw
    modes (the sizes libcamera lists for the Raw role, as the ``sensor_modes`` property does, but
    without reconfiguring the camera), and be what a still configuration takes when no size is
    given."""
    tree = parse(wheel, "picamera2")
    found = methods(tree, "Picamera2")
    assert "self._open_camera()" in ast.unparse(found["__init__"])
    assert "self._initialize_camera()" in ast.unparse(found["_open_camera"])
    initialize = ast.unparse(found["_initialize_camera"])
    assert "self._raw_modes = self._get_raw_modes()" in initialize
    assert "self._native_mode = self._select_native_mode(self._raw_modes)" in initialize
    assert "self.sensor_resolution = self._native_mode['size']" in initialize
    raw_modes = ast.unparse(found["_get_raw_modes"])
    assert "generate_configuration([libcamera.StreamRole.Raw])" in raw_modes
    assert "raw_formats.sizes(pix)" in raw_modes
    # The native mode is the one of the largest area (ties broken by bit depth).
    select = ast.unparse(found["_select_native_mode"])
    assert "area(mode['size']) > area(best_mode['size'])" in select
    still = ast.unparse(found["create_still_configuration"])
    assert "'size': self.sensor_resolution" in still
    # And picamera2 itself refuses a lores stream larger than the main one.
    check = ast.unparse(found["check_camera_config"])
    assert "lores_w > main_w or lores_h > main_h" in check


def test_camera_controls_is_a_property_keyed_by_control_names(wheel):
    """We look for ``"AfMode" in camera_controls`` to tell a camera with a focus motor."""
    tree = parse(wheel, "picamera2")
    func = method(tree, "Picamera2", "camera_controls")
    assert calling_decorators(func) == {"property"}
    assert "self.camera_ctrl_info.items()" in ast.unparse(func)
    source = wheel.read("picamera2/picamera2.py").decode()
    assert "self.camera_ctrl_info[k.name] = (k, v)" in source  # libcamera's control names


def test_autofocus_cycle_with_a_number_waits_and_times_out_like_a_capture(wheel):
    """``autofocus_cycle(wait=seconds)`` returns True/False, or raises TimeoutError (the dispatch
    path checked in test_numeric_wait_raises_timeout_error)."""
    func = method(parse(wheel, "picamera2"), "Picamera2", "autofocus_cycle")
    last = func.body[-1]
    assert isinstance(last, ast.Return)
    assert isinstance(last.value, ast.Call)
    assert ast.unparse(last.value.func) == "self.dispatch_functions"
    assert passes_wait(last.value)


# The fake picamera2: each method it defines (private helpers aside) against the real one.
FAKED = {"Picamera2": "picamera2", "CompletedRequest": "request"}


def fake_methods(class_name: str) -> dict[str, ast.FunctionDef]:
    found = methods(ast.parse(FAKE_SOURCE.read_text()), class_name)
    return {name: f for name, f in found.items() if name == "__init__" or not name.startswith("_")}


FAKE_METHODS = [(class_name, name) for class_name in FAKED for name in fake_methods(class_name)]


@pytest.mark.parametrize(("class_name", "name"), FAKE_METHODS, ids=[f"{c}.{n}" for c, n in FAKE_METHODS])
def test_fake_method_has_the_real_signature(wheel, class_name, name):
    fake = fake_methods(class_name)[name]
    real = method(parse(wheel, FAKED[class_name]), class_name, name)
    assert parameters(fake) == parameters(real)
    assert calling_decorators(fake) == calling_decorators(real)


def test_fake_has_everything_our_camera_uses():
    for _, class_name, name, _, _ in CALLS:
        assert name in fake_methods(class_name), f"the fake has no {class_name}.{name}"
    properties = {n for n, f in fake_methods("Picamera2").items() if calling_decorators(f) == {"property"}}
    assert properties == ATTRIBUTES - {"options", "sensor_resolution"}
    # options is a plain dict, set in __init__ (see test_options_is_a_dict_set_once_at_construction).
    init = ast.unparse(fake_methods("Picamera2")["__init__"])
    assert "self.options = {}" in init
    # sensor_resolution is a plain attribute (see test_sensor_resolution_is_the_largest_sensor_mode).
    fake = next(n for n in ast.parse(FAKE_SOURCE.read_text()).body if getattr(n, "name", "") == "Picamera2")
    assert any(ast.unparse(n).startswith("sensor_resolution = ") for n in fake.body)
