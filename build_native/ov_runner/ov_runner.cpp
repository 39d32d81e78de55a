// ov_runner: load a stateful OpenVINO LLM IR (optimum-intel's openvino_model.xml) and greedy-decode a prompt, the
// way a native app on an AI PC would, using nothing but the OpenVINO runtime. Proof that the pipeline's IRs work
// outside Python; its tokens are compared with the Python (openvino / openvino-genai) run in tests/test_native.py.
//
//   ov_runner MODEL_DIR (--ids 1,2,3 | --text "..." --tokenizers-ext LIB) [--max-new-tokens N] [--device CPU]
//             [--eos 2,32000] [--prop KEY=VALUE]...
//
// Prints ONE line of JSON on stdout: prompt_ids, tokens (generated ids), text (when tokenizing), ttft_ms,
// tokens_per_s (decode steps after the first token), so callers parse it rather than scrape logs.
#include <openvino/openvino.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> parse_ids(const std::string& csv) {
    std::vector<int64_t> ids;
    std::stringstream in(csv);
    for (std::string item; std::getline(in, item, ',');)
        if (!item.empty()) ids.push_back(std::stoll(item));
    return ids;
}

std::string json_ids(const std::vector<int64_t>& ids) {
    std::string s = "[";
    for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
    return s + "]";
}

std::string json_string(const std::string& text) {
    std::string s = "\"";
    for (unsigned char c : text) {
        if (c == '"' || c == '\\') s += '\\', s += static_cast<char>(c);
        else if (c < 0x20) { char buf[8]; std::snprintf(buf, sizeof buf, "\\u%04x", c); s += buf; }
        else s += static_cast<char>(c);  // UTF-8 passes through unchanged
    }
    return s + "\"";
}

// The id of the largest logit in the last row of logits [1, T, V]; first index wins ties, as in numpy.argmax and
// openvino-genai's greedy sampler, so near-flat logits of tiny test models still decode identically.
int64_t argmax_last(const ov::Tensor& logits) {
    if (logits.get_element_type() != ov::element::f32)
        throw std::runtime_error("logits are " + logits.get_element_type().get_type_name() + ", expected f32");
    const ov::Shape shape = logits.get_shape();
    const size_t vocab = shape.back();
    const float* row = logits.data<const float>() + (shape[1] - 1) * vocab;
    return std::max_element(row, row + vocab) - row;
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc < 2) throw std::runtime_error("usage: ov_runner MODEL_DIR (--ids 1,2 | --text STR ...) [options]");
    const std::string dir = argv[1];
    std::string device = "CPU", text, ext;
    std::vector<int64_t> prompt, eos;
    size_t max_new = 16;
    ov::AnyMap config;  // compile properties as strings; the plugin parses them (e.g. INFERENCE_PRECISION_HINT=f32)
    for (int i = 2; i < argc; ++i) {
        const std::string flag = argv[i];
        if (i + 1 >= argc) throw std::runtime_error("missing value after " + flag);
        const std::string value = argv[++i];
        if (flag == "--ids") prompt = parse_ids(value);
        else if (flag == "--text") text = value;
        else if (flag == "--tokenizers-ext") ext = value;
        else if (flag == "--max-new-tokens") max_new = std::stoul(value);
        else if (flag == "--device") device = value;
        else if (flag == "--eos") eos = parse_ids(value);
        else if (flag == "--prop") {
            const size_t eq = value.find('=');
            if (eq == std::string::npos) throw std::runtime_error("--prop wants KEY=VALUE, got " + value);
            config[value.substr(0, eq)] = value.substr(eq + 1);
        } else throw std::runtime_error("unknown option " + flag);
    }

    ov::Core core;
    // Tokenizer IRs use custom ops from the openvino_tokenizers extension library; only needed for --text.
    if (!ext.empty()) core.add_extension(ext);
    if (!text.empty()) {
        if (ext.empty()) throw std::runtime_error("--text needs --tokenizers-ext (the openvino_tokenizers library)");
        ov::InferRequest tok = core.compile_model(dir + "/openvino_tokenizer.xml", "CPU").create_infer_request();
        ov::Tensor in(ov::element::string, ov::Shape{1});
        in.data<std::string>()[0] = text;
        tok.set_input_tensor(in);
        tok.infer();
        const ov::Tensor ids = tok.get_tensor("input_ids");
        prompt.assign(ids.data<const int64_t>(), ids.data<const int64_t>() + ids.get_size());
    }
    if (prompt.empty()) throw std::runtime_error("no prompt: pass --ids or --text");

    std::shared_ptr<ov::Model> model = core.read_model(dir + "/openvino_model.xml");
    auto has_input = [&](const std::string& name) {
        for (const auto& port : model->inputs())
            if (port.get_names().count(name)) return true;
        return false;
    };
    const bool with_positions = has_input("position_ids"), with_beam = has_input("beam_idx");
    ov::InferRequest request = core.compile_model(model, device, config).create_infer_request();
    request.reset_state();  // stateful IR: the KV cache lives in the request's variables, not in inputs/outputs

    std::vector<int64_t> generated, step = prompt;
    std::vector<int32_t> beam{0};  // one sequence: keep KV-cache row 0 at every step
    size_t past = 0;
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    auto first = start;
    while (generated.size() < max_new) {
        // Each step feeds only the new tokens; the mask covers past + new, positions continue from the past length.
        std::vector<int64_t> mask(past + step.size(), 1), positions(step.size());
        for (size_t j = 0; j < step.size(); ++j) positions[j] = static_cast<int64_t>(past + j);
        request.set_tensor("input_ids", ov::Tensor(ov::element::i64, {1, step.size()}, step.data()));
        request.set_tensor("attention_mask", ov::Tensor(ov::element::i64, {1, mask.size()}, mask.data()));
        if (with_positions)
            request.set_tensor("position_ids", ov::Tensor(ov::element::i64, {1, positions.size()}, positions.data()));
        if (with_beam) request.set_tensor("beam_idx", ov::Tensor(ov::element::i32, {1}, beam.data()));
        request.infer();
        const int64_t next = argmax_last(request.get_tensor("logits"));
        if (generated.empty()) first = clock::now();
        past += step.size();
        generated.push_back(next);
        if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
        step.assign(1, next);
    }
    const auto end = clock::now();
    const double ttft_ms = std::chrono::duration<double, std::milli>(first - start).count();
    const double decode_s = std::chrono::duration<double>(end - first).count();
    const double tps = generated.size() > 1 && decode_s > 0 ? (generated.size() - 1) / decode_s : 0.0;

    std::string out_text;
    if (!ext.empty() && !generated.empty()) {
        ov::InferRequest detok = core.compile_model(dir + "/openvino_detokenizer.xml", "CPU").create_infer_request();
        detok.set_input_tensor(ov::Tensor(ov::element::i64, {1, generated.size()}, generated.data()));
        detok.infer();
        out_text = detok.get_output_tensor().data<std::string>()[0];
    }

    std::cout << "{\"prompt_ids\":" << json_ids(prompt) << ",\"tokens\":" << json_ids(generated)
              << ",\"text\":" << (ext.empty() ? "null" : json_string(out_text)) << ",\"device\":" << json_string(device)
              << ",\"ttft_ms\":" << ttft_ms << ",\"tokens_per_s\":" << tps
              << ",\"openvino\":" << json_string(ov::get_openvino_version().buildNumber) << "}" << std::endl;
    return 0;
} catch (const std::exception& e) {
    // One line on stderr: callers (pipeline/native.py) surface it as the error message.
    std::string msg = e.what();
    std::replace(msg.begin(), msg.end(), '\n', ' ');
    std::cerr << "ov_runner: error: " << msg << std::endl;
    return 1;
}
