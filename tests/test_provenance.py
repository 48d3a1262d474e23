"""What results record of the machine that computed them."""
from nnae_utils import provenance


def test_cpu_model_names_family_model_and_vector_extension(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\n"
                    "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx fma avx2\n\n"
                    "processor\t: 1\ncpu family\t: 99\nmodel name\t: other\nflags\t\t: avx512f\n")
    assert provenance.cpu_model(str(info)) == "AMD EPYC (family 25, model 1, avx2)"  # the first processor's block
    info.write_text("model name\t: Some CPU\nflags\t\t: fpu avx512f avx2\n")
    assert provenance.cpu_model(str(info)) == "Some CPU (avx512f)"
    assert provenance.cpu_model(str(tmp_path / "missing"))  # no /proc: what platform knows
    assert provenance.machine()["cpu"]
