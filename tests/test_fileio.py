from compressor.fileio import shown_path


def test_reports_name_files_without_this_machines_directories(tmp_path, monkeypatch):
    inside = tmp_path / "work" / "q.tflite"
    inside.parent.mkdir()
    inside.write_bytes(b"")
    elsewhere = tmp_path / "elsewhere" / "ptq.pt"
    monkeypatch.chdir(tmp_path / "work")
    assert shown_path(inside) == "q.tflite"
    assert shown_path("q.tflite") == "q.tflite"
    assert shown_path(elsewhere) == "ptq.pt"
    monkeypatch.chdir(tmp_path)
    assert shown_path(inside) == "work/q.tflite"
